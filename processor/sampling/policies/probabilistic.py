"""`probabilistic`: consistent probability on the trace id (see `sampling/consistent.py`); kept traces get
`ot=th:...` in their spans' tracestate."""

from __future__ import annotations

import numpy as np

from processor.config_node import Node
from processor.sampling.consistent import encode_th, rejection_threshold
from processor.sampling.policies.base import Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchLayout


class Probabilistic(Policy):
    kind = "probabilistic"

    def __init__(self, name: str, percentage: float) -> None:
        super().__init__(name)
        self.threshold = rejection_threshold(percentage)
        self.th = encode_th(self.threshold)

    def matches(self, trace: TraceView, now: float) -> bool:
        return int.from_bytes(trace.trace_id[9:16], "big") >= self.threshold

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        threshold = np.uint64(self.threshold)
        return lambda f, rows: f.low56()[rows] >= threshold


def build(node: Node, name: str) -> Policy:
    if node.raw("percentage") is None:
        raise node.error("percentage", "a keep percentage in [0, 100] (required)")
    return Probabilistic(name, node.float("percentage", minimum=0, maximum=100))
