"""`span_count`: traces with at least `min` (and at most `max`, if given) spans."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.base import Policy, TraceView


class SpanCount(Policy):
    kind = "span_count"

    def __init__(self, name: str, minimum: int, maximum: int | None) -> None:
        super().__init__(name)
        self.minimum = minimum
        self.maximum = maximum

    def matches(self, trace: TraceView, now: float) -> bool:
        return trace.nspans >= self.minimum and (self.maximum is None or trace.nspans <= self.maximum)


def build(node: Node, name: str) -> Policy:
    minimum = node.int("min", minimum=1)
    maximum = node.int("max", minimum=minimum) if node.has("max") else None
    return SpanCount(name, minimum, maximum)
