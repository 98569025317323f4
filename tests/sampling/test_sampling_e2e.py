"""OTel SDK exporters -> a running recohop with the tail-sampling stage -> downstream, over real gRPC."""

from __future__ import annotations

import time
from collections import Counter

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from otlp_peers import wait_until, wait_until_drained
from sampling_helpers import DEFAULT_POLICIES

from processor.sampling.consistent import keeps, rejection_threshold

CONFIG = """
exporter:
  endpoint: {downstream}
  retry: {{initial_interval: 50ms}}
pipeline:
  - type: tail_sampling
    policies: {policies}
    root_grace: 300ms
    decision_wait: 3s
"""


def provider(endpoint: str) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": "recommendation-service"}))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                             max_export_batch_size=500, max_queue_size=20_000,
                                             schedule_delay_millis=100))
    return tp


def test_sdk_traffic_through_the_hop(downstream, start_hop) -> None:  # noqa: ANN001
    hop = start_hop(CONFIG.format(downstream=downstream.endpoint, policies=DEFAULT_POLICIES))
    # Two providers = two exporters = two gRPC connections; some traces have spans on both.
    a, b = provider(hop.endpoint), provider(hop.endpoint)
    logs = LoggerProvider(resource=Resource.create({"service.name": "recommendation-service"}))
    logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=hop.endpoint, insecure=True),
                                                          schedule_delay_millis=100))
    logger = logs.get_logger("recommender")
    ta, tb = a.get_tracer("recommender"), b.get_tracer("recommender")
    special: dict[int, tuple[str, int]] = {}  # trace id -> (kind, spans)
    ordinary: dict[int, int] = {}
    t0 = time.time_ns()
    for i in range(1500):
        kind = ("error", "fallback", "slow", "split_error", "error_log")[i // 10] if i < 50 else "ordinary"
        end = t0 + (700_000_000 if kind == "slow" else 30_000_000)
        root = ta.start_span("reco.generate", kind=SpanKind.SERVER, start_time=t0)
        root.set_attribute("reco.fallback", kind == "fallback")
        root.set_attribute("reco.strategy", "cf")
        ctx = set_span_in_context(root)
        tracer = tb if kind == "split_error" else ta
        for name in ("reco.fetch_candidates", "reco.score_candidates"):
            child = tracer.start_span(name, context=ctx, start_time=t0)
            if kind in ("error", "split_error") and name == "reco.score_candidates":
                child.record_exception(TimeoutError("model server"))
                child.set_status(Status(StatusCode.ERROR))
            child.end(end_time=t0 + 10_000_000)
        if kind == "error_log":
            span_context = root.get_span_context()
            logger.emit(LogRecord(timestamp=t0, trace_id=span_context.trace_id, span_id=span_context.span_id,
                                  trace_flags=span_context.trace_flags, severity_number=SeverityNumber.ERROR,
                                  severity_text="ERROR", body="scoring degraded"))
        root.end(end_time=end)
        trace_id = root.get_span_context().trace_id
        if kind == "ordinary":
            ordinary[trace_id] = 3
        else:
            special[trace_id] = (kind, 3)
    for p in (a, b, logs):
        p.force_flush()
    threshold = rejection_threshold(1)
    lucky = {tid for tid in ordinary if keeps(tid.to_bytes(16, "big"), threshold)}
    want_spans = 3 * (len(special) + len(lucky))
    wait_until(lambda: len(downstream.spans()) >= want_spans and downstream.raw["logs"],
               f"{want_spans} spans and the error logs downstream",
               seen=lambda: (len(downstream.spans()), len(downstream.raw["logs"])))
    wait_until_drained(hop, downstream)  # every span was received (force_flush): nothing more can arrive
    counts = Counter(int.from_bytes(s.trace_id, "big") for s in downstream.spans())
    for tid, (kind, nspans) in special.items():
        assert counts[tid] == nspans, kind
    assert {tid for tid in ordinary if counts[tid]} == lucky
    assert all(counts[tid] == 3 for tid in lucky)
    assert len(downstream.spans()) == want_spans
    log_bodies = [lr.body.string_value for r in downstream.requests("logs") for rl in r.resource_logs
                  for sl in rl.scope_logs for lr in sl.log_records]
    assert log_bodies == ["scoring degraded"] * 10
    policies = Counter(kv.value.string_value for s in downstream.spans() for kv in s.attributes
                       if kv.key == "sampling.policy")
    assert policies == {"errors": 20, "fallback": 10, "slow-generate": 10, "error-logs": 10,
                        "baseline": len(lucky)}
    for p in (a, b, logs):
        p.shutdown()
    assert hop.terminate() == 0


PRESSURE_CONFIG = """
exporter:
  endpoint: {downstream}
  retry: {{initial_interval: 50ms}}
pipeline:
  - type: tail_sampling
    policies: {policies}
    max_bytes: 128KiB
    root_grace: 5s
"""


def test_memory_pressure_through_the_hop_keeps_every_error(downstream, start_hop) -> None:  # noqa: ANN001
    import random
    import urllib.request

    import grpc

    from bench.sampling_workload import all_spans, make_trace, make_traces, to_requests
    from processor.signals import METHOD_PATHS

    hop = start_hop(PRESSURE_CONFIG.format(downstream=downstream.endpoint, policies=DEFAULT_POLICIES))
    rng = random.Random(31)
    traces = make_traces(seed=30, count=3000, special_fraction=0.0)
    errors = [make_trace(rng, "error") for _ in range(60)]
    mixed = traces + errors
    rng.shuffle(mixed)
    payloads = [r.SerializeToString() for r in to_requests(all_spans(mixed), per_request=300)]
    with grpc.insecure_channel(hop.endpoint) as channel:
        export = channel.unary_unary(METHOD_PATHS["traces"])
        for payload in payloads:  # ~4 MB of spans into a 128 KiB buffer, far faster than root_grace
            export(payload, timeout=10)
    metrics = urllib.request.urlopen(hop.metrics_url, timeout=5).read().decode()
    gauge = next(line for line in metrics.splitlines() if line.startswith("recohop_sampling_buffer_bytes "))
    assert float(gauge.split()[1]) <= 128 * 1024
    early = next(line for line in metrics.splitlines()
                 if line.startswith('recohop_sampling_decided_early_total{reason="max_bytes"}'))
    assert float(early.split()[1]) > 1000
    error_ids = {t.trace_id: len(t.spans) for t in errors}
    wait_until(lambda: sum(1 for s in downstream.spans() if s.trace_id in error_ids) >= sum(error_ids.values()),
               f"{sum(error_ids.values())} error-trace spans delivered",
               seen=lambda: sum(1 for s in downstream.spans() if s.trace_id in error_ids))
    counts = Counter(s.trace_id for s in downstream.spans())
    assert {tid: counts[tid] for tid in error_ids} == error_ids
    assert hop.terminate() == 0
