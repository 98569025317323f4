"""Span metrics stage: derives RED and rule-defined metrics from 100 % of spans (place it before tail
sampling). It only reads spans (`mutates = False`); derived metrics go to /metrics and, on each flush, as OTLP
metrics to the next hop.

```yaml
- type: spanmetrics
  rules: derivations/default.yaml   # optional; relative to the hop config. Omit for RED metrics only
  red: true                         # traces_span_metrics_calls_total / _duration_seconds
  namespace: traces_span_metrics
  buckets: [0.002, 0.004, ...]      # seconds; otelcol spanmetrics' default buckets
  flush_interval: 15s
  otlp_output: true                 # emit derived metrics (cumulative) from flush
  series_limit: 2000                # per derived metric; rules may override
  forbidden_keys: [tenant.user]     # added to the built-in list (user.id, user.email, client.address, ...)
  exemplars: {enabled: true, per_bucket: 4, max_traces: 100000, max_wait: 2m}
```
RED metrics follow otelcol's spanmetrics connector as exported to Prometheus (namespace `traces_span_metrics`):
`traces_span_metrics_calls_total{service_name,span_name,span_kind,status_code}` and
`traces_span_metrics_duration_seconds_bucket{...,le}` with `span_kind="SPAN_KIND_SERVER"`,
`status_code="STATUS_CODE_ERROR"`; errors are `calls_total{status_code="STATUS_CODE_ERROR"}` (as with otelcol).
Durations are in seconds (otelcol's default unit is ms; its default bucket bounds are used here in seconds).

Log records are counted too, on 100 % of logs before sampling: `traces_span_metrics_log_records_total
{service_name,severity}` (severity from the OTLP severity number: TRACE, DEBUG, INFO, WARN, ERROR, FATAL, or
UNSPECIFIED).

Spans are read by the native scanner (`processor/native/_spanscan.c`, via `processor/spanmetrics/native.py`)
straight from the serialized request when it is built, with the pure-Python scan as fallback and reference.

Exemplars are attached only for traces a tail-sampling stage reports as kept on `ctx.decisions`; without a
tail-sampling stage there are no exemplars at all (never one pointing at a dropped trace). Candidates wait at
most `max_wait` for the decision (set it above the sampler's decision_wait).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from processor.assets import builtin_file
from processor.cardinality.limits import DEFAULT_FORBIDDEN_KEYS, CardinalitySelfMetrics, ForbiddenKeys
from processor.config_node import Node
from processor.schema import SETTINGS, value
from processor.spanmetrics.derive import Deriver
from processor.spanmetrics.exemplars import ExemplarReservoir
from processor.spanmetrics.exposition import DerivedCollector
from processor.spanmetrics.otlp import to_otlp
from processor.spanmetrics.rules import load_rules, parse_buckets
from processor.stages.base import Emitted, LogsRequest, Stage, StageContext, TracesRequest

DEFAULT_RULES = builtin_file("derivations/default.yaml")
# otelcol spanmetrics connector's default buckets (2ms ... 15s), in seconds.
DEFAULT_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0]


def default_stage_config() -> dict[str, Any]:
    """The built-in span metrics stage: RED plus the recommender rules shipped in collector-config/."""
    return {"type": "spanmetrics", "rules": str(DEFAULT_RULES), "otlp_output": True,
            "flush_interval": SETTINGS["spanmetrics.flush_interval"].default,
            "series_limit": value("spanmetrics.series_limit")}


SEVERITY_BANDS = ("UNSPECIFIED", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


class LogRecordCounter:
    """Log records by service and severity band (OTLP severity numbers 1-4 TRACE ... 21-24 FATAL)."""

    def __init__(self, registry: CollectorRegistry, namespace: str) -> None:
        self.counter = Counter(f"{namespace}_log_records", "Log records received, before sampling",
                               ["service_name", "severity"], registry=registry)
        self._children: dict[tuple[str, int], Counter] = {}

    def count(self, request: LogsRequest) -> None:
        for rl in request.resource_logs:
            service = next((a.value.string_value for a in rl.resource.attributes if a.key == "service.name"), "")
            for sl in rl.scope_logs:
                bands: dict[int, int] = {}
                for record in sl.log_records:
                    band = (record.severity_number + 3) // 4 if 0 < record.severity_number <= 24 else 0
                    bands[band] = bands.get(band, 0) + 1
                for band, n in bands.items():
                    child = self._children.get((service, band))
                    if child is None:
                        child = self._children[(service, band)] = self.counter.labels(service, SEVERITY_BANDS[band])
                    child.inc(n)


class SpanMetricsStage(Stage):
    name = "spanmetrics"
    mutates = False
    log_counter: LogRecordCounter | None = None

    def __init__(self, deriver: Deriver, flush_interval: float, otlp_output: bool) -> None:
        self.deriver = deriver
        self.flush_interval = flush_interval
        self.otlp_output = otlp_output
        self.start_ns = time.time_ns()
        # With the native intake built, serialized requests come in and go on unchanged (no parse at all).
        self.takes_trace_bytes = deriver.native is not None

    def on_traces(self, request: TracesRequest) -> list[TracesRequest]:
        if self.deriver.native is None or not self.deriver.consume_bytes(request.SerializeToString()):
            self.deriver.consume(request)
        return [request]

    def prepare_trace_bytes(self, raw: bytes) -> None:
        """The scanner's walk, ahead of the stage's lock (`Stage.prepare_trace_bytes`)."""
        self.deriver.walk_bytes(raw)

    def prepare_job(self, raw: bytes) -> object | None:
        return self.deriver.walk_job(raw)

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        if not self.deriver.consume_bytes(raw):
            self.deriver.consume(TracesRequest.FromString(raw))
        return [raw]

    def on_logs(self, request: LogsRequest) -> list[LogsRequest]:
        if self.log_counter is not None:
            self.log_counter.count(request)
        return [request]

    def flush(self, now: float) -> Emitted | None:
        self.deriver.expire()
        return self._emit()

    def shutdown(self) -> Emitted | None:
        return self._emit()

    def _emit(self) -> Emitted | None:
        if not self.otlp_output:
            return None
        request = to_otlp(self.deriver.snapshot(), self.start_ns, time.time_ns())
        if not request.resource_metrics[0].scope_metrics[0].metrics:
            return None
        return Emitted(metrics=[request])


def build(node: Node, ctx: StageContext) -> Stage:
    forbidden = ForbiddenKeys([*DEFAULT_FORBIDDEN_KEYS, *node.str_list("forbidden_keys")])
    series_limit = node.int("series_limit", value("spanmetrics.series_limit"), minimum=1)
    buckets = parse_buckets(node, "buckets") if node.has("buckets") else list(DEFAULT_BUCKETS)
    rules_path = node.path_value("rules")
    rules = load_rules(rules_path, forbidden, series_limit) if rules_path is not None else None
    red = node.bool("red", True)
    if rules is None and not red:
        raise node.error("rules", "a rules file, or red: true (otherwise the stage derives nothing)")
    namespace = node.str("namespace", "traces_span_metrics")
    ex = node.child("exemplars")
    reservoir = None
    if ex.bool("enabled", True):
        reservoir = ExemplarReservoir(ex.int("per_bucket", 4, minimum=1), ex.int("max_traces", 100_000, minimum=1),
                                      ex.duration("max_wait", "2m"), ctx.clock)
    ex.done()
    deriver = Deriver(rules, red, namespace, buckets, series_limit, CardinalitySelfMetrics.of(ctx.registry),
                      reservoir)
    stage = SpanMetricsStage(deriver, node.duration("flush_interval", value("spanmetrics.flush_interval")), node.bool("otlp_output", True))
    if node.bool("log_records", True):
        stage.log_counter = LogRecordCounter(ctx.registry, namespace)
    stage.name = node.str("name", "spanmetrics")
    if stage.flush_interval <= 0:
        raise node.error("flush_interval", "a duration > 0")
    if reservoir is not None:
        ctx.decisions.subscribe_batch(deriver.decide_batch)
    ctx.registry.register(DerivedCollector(deriver))
    return stage
