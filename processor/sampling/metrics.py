"""Tail sampling's self-metrics: buffer gauges, decisions by deciding policy, early decisions by reason, late
data, decision latency, log outcomes and faults. Decision counts are tallied per batch (array counts) and
published into the prometheus counters once per stage call."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge
from prometheus_client.core import HistogramMetricFamily

from processor.sampling.policies.policyset import Decision, PolicySet
from processor.sampling.trigger import EARLY_REASONS

# Where a fault can happen (`recohop_sampling_faults_total{step}`): intake (refused whole, nothing changed), then
# per decision batch: select, facts, decide (both decided on_error), emit, finish (batch aborted: its traces stay
# buffered for the next selection), publish (after the decisions are recorded: only bookkeeping is lost).
FAULT_STEPS = ("intake", "select", "facts", "decide", "emit", "finish", "publish")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.25, 2.5, 3.0, 5.0, 10.0, 15.0, 30.0)
LOG_OUTCOMES = ("buffered", "kept", "dropped", "passed", "late_kept", "late_dropped", "rate_limited")


class LatencyHistogram:
    """`recohop_sampling_decision_latency_seconds` as a custom collector: one bisect per decision instead of a
    locked prometheus_client Histogram.observe on the decision path."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = list(buckets)
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: np.ndarray) -> None:
        """`observe` for a batch (searchsorted 'left' is bisect_left)."""
        found = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        for i in np.flatnonzero(found).tolist():
            self.counts[i] += int(found[i])
        self.sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family = HistogramMetricFamily(self.name, self.doc)
        family.add_metric([], buckets, self.sum)
        yield family


class SamplingMetrics:
    """Self-metrics; decision counts are tallied in plain dicts on the hot path and published per batch."""

    def __init__(self, registry: Any, policies: PolicySet | None = None) -> None:
        self.buffer_traces = Gauge("recohop_sampling_buffer_traces", "Traces waiting for a decision",
                                   registry=registry)
        self.buffer_bytes = Gauge("recohop_sampling_buffer_bytes",
                                  "Serialized bytes of spans and logs waiting for a decision", registry=registry)
        self.decisions = Counter("recohop_sampling_decisions", "Trace decisions by deciding policy",
                                 ["policy", "decision"], registry=registry)
        self.decided_early = Counter("recohop_sampling_decided_early",
                                     "Traces decided before their time, by reason", ["reason"], registry=registry)
        self.late_spans = Counter("recohop_sampling_late_spans", "Spans arriving after their trace's decision",
                                  ["decision"], registry=registry)
        self.latency = LatencyHistogram("recohop_sampling_decision_latency_seconds",
                                        "First span of a trace to its decision", LATENCY_BUCKETS)
        if registry is not None:
            registry.register(self.latency)
        self.logs = Counter("recohop_sampling_logs", "Log records by sampling outcome", ["outcome"],
                            registry=registry)
        # Every outcome the policy file can give and every early reason exist at 0 from start: a healthy hop
        # answers "0 decided early" instead of "no data".
        if policies is not None:
            outcomes = [(p.name, "keep") for p in policies.keeps] + [(p.name, "drop") for p in policies.drops]
            for decision in (policies.no_match, policies.on_error):
                outcomes.append((decision.policy, "keep" if decision.kept else "drop"))
            for policy, outcome in outcomes:
                self.decisions.labels(policy, outcome)
        for reason in EARLY_REASONS:
            self.decided_early.labels(reason)
        self.faults = Counter("recohop_sampling_faults", "Exceptions met by tail sampling, by step (the stage goes on)",
                              ["step"], registry=registry)
        self.fault_steps = {step: self.faults.labels(step) for step in FAULT_STEPS}
        self.late_keep = self.late_spans.labels("keep")
        self.late_drop = self.late_spans.labels("drop")
        self.log_outcomes = {o: self.logs.labels(o) for o in LOG_OUTCOMES}
        self.tally: dict[Decision, int] = {}
        self.early: dict[str, int] = {}

    def batch_decided(self, slots: np.ndarray, kept: np.ndarray, decisions: list[Decision], nlogs: np.ndarray,
                      first: np.ndarray, reasons: tuple[str, ...], why: bytes | None, now: float) -> None:
        """Tally a decided batch: `slots` index `decisions`; per row its log records, first-seen time and (when
        the batch has several reasons) the index of its reason in `why`."""
        if nlogs.any():
            kept_logs = int(nlogs[kept].sum())
            dropped_logs = int(nlogs.sum()) - kept_logs
            if kept_logs:
                self.log_outcomes["kept"].inc(kept_logs)
            if dropped_logs:
                self.log_outcomes["dropped"].inc(dropped_logs)
        tally = self.tally
        counts = np.bincount(slots, minlength=len(decisions))
        for slot in np.flatnonzero(counts).tolist():
            tally[decisions[slot]] = tally.get(decisions[slot], 0) + int(counts[slot])
        self.latency.observe_many(now - first)
        if why is None:
            counted = {reasons[0]: len(slots)}
        else:
            found = np.bincount(np.frombuffer(why, dtype=np.uint8), minlength=len(reasons))
            counted = {reasons[i]: int(found[i]) for i in np.flatnonzero(found).tolist()}
        for reason, count in counted.items():
            if reason in EARLY_REASONS:
                self.early[reason] = self.early.get(reason, 0) + count

    def publish(self, traces: int, nbytes: int) -> None:
        """Move the tallies into the prometheus counters; set the buffer gauges."""
        for decision, count in self.tally.items():
            self.decisions.labels(decision.policy, "keep" if decision.kept else "drop").inc(count)
        self.tally.clear()
        for reason, count in self.early.items():
            self.decided_early.labels(reason).inc(count)
        self.early.clear()
        self.buffer_size(traces, nbytes)

    def buffer_size(self, traces: int, nbytes: int) -> None:
        """The buffer gauges alone (safe without the stage's lock: the tallies are not touched)."""
        self.buffer_traces.set(traces)
        self.buffer_bytes.set(nbytes)
