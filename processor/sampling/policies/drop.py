"""`drop`: a trace matching the sub-policy is dropped, whatever any keep policy says (e.g. health checks)."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.base import BuildPart, Needs, Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchLayout


class Drop(Policy):
    kind = "drop"

    def __init__(self, name: str, part: Policy) -> None:
        super().__init__(name)
        self.part = part

    def add_needs(self, needs: Needs) -> None:
        self.part.add_needs(needs)

    def matches(self, trace: TraceView, now: float) -> bool:
        return self.part.matches(trace, now)

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        return self.part.batch(layout, now)


def build(node: Node, name: str, build_policy: BuildPart) -> Policy:
    if node.raw("policy") is None:
        raise node.error("policy", "the sub-policy that selects traces to drop (required)")
    return Drop(name, build_policy(node.child("policy"), f"{name}.policy"))
