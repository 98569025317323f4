"""`status_code`: any span with status ERROR, or (by default) any span with an `exception` event."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.base import Needs, Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchLayout


class StatusCode(Policy):
    kind = "status_code"

    def __init__(self, name: str, exception_events: bool) -> None:
        super().__init__(name)
        self.exception_events = exception_events

    def add_needs(self, needs: Needs) -> None:
        needs.exception_events = needs.exception_events or self.exception_events

    def matches(self, trace: TraceView, now: float) -> bool:
        return trace.error or (self.exception_events and trace.exception)

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        if self.exception_events:
            return lambda f, rows: f.error[rows] | f.exception[rows]
        return lambda f, rows: f.error[rows].copy()


def build(node: Node, name: str) -> Policy:
    return StatusCode(name, node.bool("exception_events", True))
