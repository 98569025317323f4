"""Exemplars that never dangle: candidates wait for the tail-sampling decision of their trace.

Per histogram series and bucket at most `per_bucket` candidates wait at a time, so rare buckets (slow or
failed requests, the traces tail sampling keeps) always have candidates while busy buckets cost a bounded
amount of memory. A `kept` decision turns the trace's candidates into the series' exemplars; `dropped`, age
(`max_wait`) or the global cap (`max_traces`) discards them. Without any decision publisher nothing is ever
attached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from processor.spanmetrics.aggregate import Exemplar, HistogramAgg


@dataclass
class Candidate:
    agg: HistogramAgg
    slot: int
    bucket: int
    exemplar: Exemplar


class ExemplarReservoir:
    def __init__(self, per_bucket: int, max_traces: int, max_wait: float, clock: Callable[[], float]) -> None:
        self.per_bucket = per_bucket
        self.max_traces = max_traces
        self.max_wait = max_wait
        self.clock = clock
        # trace id -> (time added, candidates); dict order is age order.
        self.pending: dict[bytes, tuple[float, list[Candidate]]] = {}
        self.waiting: dict[tuple[int, int, int], int] = {}  # (id(agg), slot, bucket) -> candidates waiting
        # id(agg) -> uint8[slots, buckets], 1 where `per_bucket` candidates wait (the native intake reads it to
        # skip offering candidates there without a Python call per series and bucket)
        self.full: dict[int, np.ndarray] = {}
        self.attached = 0

    def full_mask(self, agg: HistogramAgg) -> np.ndarray:
        mask = self.full.get(id(agg))
        if mask is None:
            mask = self.full[id(agg)] = np.zeros((16, agg.width), dtype=np.uint8)
        return mask

    def _mark(self, agg: HistogramAgg, slot: int, bucket: int, full: bool) -> None:
        mask = self.full_mask(agg)
        if slot >= mask.shape[0]:
            if not full:
                return
            bigger = np.zeros((max(slot + 1, 2 * mask.shape[0]), agg.width), dtype=np.uint8)
            bigger[: mask.shape[0]] = mask
            mask = self.full[id(agg)] = bigger
        mask[slot, bucket] = full

    def wants(self, agg: HistogramAgg, slot: int, bucket: int) -> bool:
        return self.per_bucket > 0 and self.waiting.get((id(agg), slot, bucket), 0) < self.per_bucket

    def add(self, trace_id: bytes, candidate: Candidate) -> None:
        entry = self.pending.get(trace_id)
        if entry is None:
            if len(self.pending) >= self.max_traces:
                self._discard(next(iter(self.pending)))
            entry = self.pending[trace_id] = (self.clock(), [])
        entry[1].append(candidate)
        key = (id(candidate.agg), candidate.slot, candidate.bucket)
        waiting = self.waiting[key] = self.waiting.get(key, 0) + 1
        if waiting == self.per_bucket:
            self._mark(candidate.agg, candidate.slot, candidate.bucket, True)

    def decide(self, trace_id: bytes, kept: bool, policy: str) -> None:
        """DecisionBus listener: called (under the pipeline lock) when tail sampling decides a trace."""
        candidates = self._discard(trace_id)
        if kept:
            for c in candidates:
                c.agg.exemplars[(c.slot, c.bucket)] = c.exemplar
                self.attached += 1

    def expire(self) -> None:
        oldest_allowed = self.clock() - self.max_wait
        while self.pending:
            trace_id, (added, _) = next(iter(self.pending.items()))
            if added >= oldest_allowed:
                break
            self._discard(trace_id)

    def _discard(self, trace_id: bytes) -> list[Candidate]:
        entry = self.pending.pop(trace_id, None)
        if entry is None:
            return []
        for c in entry[1]:
            key = (id(c.agg), c.slot, c.bucket)
            left = self.waiting[key] - 1
            if left == self.per_bucket - 1:
                self._mark(c.agg, c.slot, c.bucket, False)
            if left:
                self.waiting[key] = left
            else:
                del self.waiting[key]
        return entry[1]
