"""`latency`: the trace's duration (earliest start to latest end), or a named span's duration, above a
threshold (e.g. `reco.generate` > 500ms)."""

from __future__ import annotations

import numpy as np

from processor.config_node import Node
from processor.sampling.policies.base import Needs, Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchFacts, BatchLayout, in_python


class Latency(Policy):
    kind = "latency"

    def __init__(self, name: str, threshold_s: float, span_name: str | None) -> None:
        super().__init__(name)
        self.threshold_ns = int(threshold_s * 1e9)
        self.span_name = span_name

    def add_needs(self, needs: Needs) -> None:
        if self.span_name is None:
            needs.trace_duration = True
        else:
            needs.span_names.add(self.span_name)

    def matches(self, trace: TraceView, now: float) -> bool:
        if self.span_name is None:
            return trace.end - trace.start > self.threshold_ns
        durations = trace.durations
        return bool(durations) and durations.get(self.span_name, -1) > self.threshold_ns

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        threshold = self.threshold_ns
        if threshold < 0:
            return in_python(self, now)
        if self.span_name is None:
            def trace_latency(f: BatchFacts, rows: np.ndarray) -> np.ndarray:
                start, end = f.recs["start"][rows], f.recs["end"][rows]
                return (end >= start) & ((end - start) > np.uint64(threshold))
            return trace_latency
        col = layout.names.index(self.span_name)
        return lambda f, rows: f.durs[rows, col] > threshold


def build(node: Node, name: str) -> Policy:
    if node.raw("threshold") is None:
        raise node.error("threshold", "a duration such as 500ms (required)")
    return Latency(name, node.duration("threshold"), node.opt_str("span_name"))
