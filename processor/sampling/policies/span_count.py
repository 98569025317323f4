"""`span_count`: traces with at least `min` (and at most `max`, if given) spans."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.base import Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchLayout


class SpanCount(Policy):
    kind = "span_count"

    def __init__(self, name: str, minimum: int, maximum: int | None) -> None:
        super().__init__(name)
        self.minimum = minimum
        self.maximum = maximum

    def matches(self, trace: TraceView, now: float) -> bool:
        return trace.nspans >= self.minimum and (self.maximum is None or trace.nspans <= self.maximum)

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        minimum, maximum = self.minimum, self.maximum
        if maximum is None:
            return lambda f, rows: f.recs["nspans"][rows] >= minimum
        return lambda f, rows: (f.recs["nspans"][rows] >= minimum) & (f.recs["nspans"][rows] <= maximum)


def build(node: Node, name: str) -> Policy:
    minimum = node.int("min", minimum=1)
    maximum = node.int("max", minimum=minimum) if node.has("max") else None
    return SpanCount(name, minimum, maximum)
