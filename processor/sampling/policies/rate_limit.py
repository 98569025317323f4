"""`rate_limit`: keeps traces while their spans fit a spans-per-second budget (a token bucket refilled from
the stage clock). Stateful, so unlike the other kinds it is not consistent across instances."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.base import Policy, TraceView


class RateLimit(Policy):
    kind = "rate_limit"

    def __init__(self, name: str, spans_per_second: float) -> None:
        super().__init__(name)
        self.rate = spans_per_second
        self.tokens = spans_per_second
        self.last: float | None = None

    def matches(self, trace: TraceView, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if trace.nspans <= self.tokens:
            self.tokens -= trace.nspans
            return True
        return False


def build(node: Node, name: str) -> Policy:
    if node.raw("spans_per_second") is None:
        raise node.error("spans_per_second", "a number of spans per second (required)")
    return RateLimit(name, node.float("spans_per_second", minimum=0))
