"""The span scan: one pass over a request, reading only name, kind, status, times and the attribute keys the
rules need, appending slot ids to per-metric batch lists that `aggregate` folds in with numpy.

RED metrics (calls and duration per service / span name / kind / status) need no attributes; the rules that
apply to a span name are compiled once per distinct name into a `Plan` (attribute key -> slot, label sources).
"""

from __future__ import annotations

import threading

import numpy as np
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from processor.cardinality.limits import CardinalitySelfMetrics, SeriesLimiter
from processor.native import load as load_native
from processor.spanmetrics.aggregate import CounterAgg, Exemplar, HistogramAgg, MetricSnapshot, SeriesIndex
from processor.spanmetrics.exemplars import Candidate, ExemplarReservoir
from processor.spanmetrics.native import NativeIntake
from processor.spanmetrics.plan import PlanFn, RuleSink, any_text, compile_plan, kind_name, status_name
from processor.spanmetrics.rules import RuleSet
from processor.stages.base import DecisionBatch, TracesRequest

_native = load_native("spanscan")

RED_LABELS = ["service_name", "span_name", "span_kind", "status_code"]
_UNPLANNED = object()


class Deriver:
    """Holds every derived metric; `consume` adds one request, `snapshot` reads them (from any thread)."""

    def __init__(self, rules: RuleSet | None, red: bool, namespace: str, buckets: list[float],
                 series_limit: int, self_metrics: CardinalitySelfMetrics,
                 reservoir: ExemplarReservoir | None) -> None:
        self.lock = threading.Lock()
        self.reservoir = reservoir
        self.red: HistogramAgg | None = None
        self.namespace = namespace
        if red:
            series = SeriesIndex(RED_LABELS, SeriesLimiter(f"{namespace}_calls_total", series_limit, self_metrics))
            self.red = HistogramAgg(f"{namespace}_duration_seconds", "Span duration (all spans, before sampling)",
                                    series, buckets, None)
        self.sinks: list[RuleSink] = []
        resource_keys = ["service.name"]
        for rule in rules.rules if rules else []:
            series = SeriesIndex(rule.label_names, SeriesLimiter(rule.name, rule.limits.series_limit, self_metrics))
            agg: CounterAgg | HistogramAgg
            if rule.kind == "histogram":
                agg = HistogramAgg(rule.name, rule.help, series, rule.buckets or buckets, rule.limits.top_k)
            else:
                integer = rule.kind == "position_split" or rule.value_attribute is None
                agg = CounterAgg(rule.name, rule.help, series, integer, rule.limits.top_k)
            self.sinks.append(RuleSink(rule, agg))
            resource_keys += [s.key for s in rule.labels if s.source == "resource" and s.key not in resource_keys]
        self.resource_pos = {k: i for i, k in enumerate(resource_keys)}
        self.plans: dict[str, PlanFn | None] = {}
        # The native intake (None when not built): same metrics, Python working per group of spans.
        self.native = NativeIntake(_native, self.red, self.sinks, resource_keys, reservoir) \
            if _native is not None else None

    def walk_bytes(self, raw: bytes) -> None:
        """The native intake's pass over `raw`, ahead of `consume_bytes` on this thread (no lock taken: see
        `NativeIntake.walk`)."""
        if self.native is not None:
            self.native.walk(raw)

    def walk_job(self, raw: bytes) -> object | None:
        """`walk_bytes` as a native job (None when the native intake is not built)."""
        return self.native.walk_job(raw) if self.native is not None else None

    def consume_bytes(self, raw: bytes) -> bool:
        """Adds a serialized request through the native intake; False when it is not built or did not
        understand the bytes (then call `consume` with the parsed request: it gives the same result).
        The bytes must be a request protobuf accepts (the receiver validates every request); for others the
        scan stays memory-safe but may raise DecodeError, as parsing them would."""
        if self.native is None:
            return False
        with self.lock:
            return self.native.consume(raw)

    def _plan(self, name: str) -> PlanFn | None:
        sinks = [s for s in self.sinks if s.rule.matches(name)]
        run = compile_plan(name, sinks, self.resource_pos).run if sinks else None
        if len(self.plans) < 10_000:  # span names are low-cardinality; a flood of names is not cached
            self.plans[name] = run
        return run

    def _resource(self, resource: object) -> tuple:
        values = [""] * len(self.resource_pos)
        pos = self.resource_pos
        for kv in resource.attributes:  # type: ignore[attr-defined]
            i = pos.get(kv.key)
            if i is not None:
                values[i] = any_text(kv.value)
        return tuple(values)

    def consume(self, request: TracesRequest) -> None:
        """One pass over the request; per span: five field reads, one dict lookup, list appends."""
        with self.lock:
            red = self.red
            red_get = red.series.index.get if red else None
            red_ids: list[int] = []
            red_durs: list[int] = []
            red_spans: list[Span] = []
            ids_append, durs_append, spans_append = red_ids.append, red_durs.append, red_spans.append
            plans_get = self.plans.get
            for rs in request.resource_spans:
                res = self._resource(rs.resource)
                svc = res[0]
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        name = span.name
                        kind = span.kind
                        code = span.status.code
                        dur = span.end_time_unix_nano - span.start_time_unix_nano
                        if dur < 0:  # end before start: count it, as zero, rather than lower _sum
                            dur = 0
                        if red_get is not None:
                            key = (svc, name, kind, code)
                            i = red_get(key)
                            if i is None:
                                i = red.series.slot(key, (svc, name, kind_name(kind), status_name(code)))  # type: ignore[union-attr]
                            ids_append(i)
                            durs_append(dur)
                            spans_append(span)
                        run = plans_get(name, _UNPLANNED)
                        if run is _UNPLANNED:
                            run = self._plan(name)
                        if run is not None:
                            run(span, kind, code, res, dur)
            if red is not None and red_ids:
                self._histogram_batch(red, red_ids, red_durs, red_spans)
            for sink in self.sinks:
                if sink.ids:
                    if isinstance(sink.agg, HistogramAgg):
                        self._histogram_batch(sink.agg, sink.ids, sink.values, sink.spans)
                    else:
                        sink.agg.add_batch(sink.ids, sink.values)
                    sink.clear()

    def _histogram_batch(self, agg: HistogramAgg, ids: list[int], durs: list[int], spans: list[Span]) -> None:
        slots, bucket, seconds = agg.add_batch(ids, durs)
        reservoir = self.reservoir
        if reservoir is None:
            return
        combined = slots * agg.width + bucket
        uniq, first = np.unique(combined, return_index=True)
        for c, i in zip(uniq.tolist(), first.tolist(), strict=True):
            slot, b = divmod(c, agg.width)
            if reservoir.wants(agg, slot, b):
                span = spans[i]
                trace_id = span.trace_id
                reservoir.add(trace_id, Candidate(agg, slot, b, Exemplar(
                    trace_id, span.span_id, float(seconds[i]), span.end_time_unix_nano)))

    def decide(self, trace_id: bytes, kept: bool, policy: str) -> None:
        if self.reservoir is not None:
            with self.lock:
                self.reservoir.decide(trace_id, kept, policy)

    def decide_batch(self, decided: DecisionBatch) -> None:
        """DecisionBus batch listener: asks the batch only about the traces with waiting exemplar candidates."""
        reservoir = self.reservoir
        if reservoir is None:
            return
        with self.lock:
            pending = reservoir.pending
            if not pending:
                return
            for trace_id, keep, policy in decided.among(pending):
                reservoir.decide(trace_id, keep, policy)

    def expire(self) -> None:
        if self.reservoir is not None:
            with self.lock:
                self.reservoir.expire()

    def snapshot(self) -> list[MetricSnapshot]:
        """All derived metrics now (RED calls come from the duration histogram's counts)."""
        with self.lock:
            out: list[MetricSnapshot] = []
            if self.red is not None:
                duration = self.red.snapshot()
                calls = [type(p)(p.labels, value=float(sum(p.buckets))) for p in duration.points]
                out.append(MetricSnapshot(f"{self.namespace}_calls_total", "Spans (calls), before sampling",
                                          "counter", [], True, calls))
                out.append(duration)
            out.extend(s.agg.snapshot() for s in self.sinks)
            return out

