"""`always`: matches every trace (e.g. keep everything from a low-volume service inside an `and`)."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.base import Policy, TraceView


class Always(Policy):
    kind = "always"

    def matches(self, trace: TraceView, now: float) -> bool:
        return True


def build(node: Node, name: str) -> Policy:
    return Always(name)
