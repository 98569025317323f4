"""Recommender-shaped synthetic traces (the telemetry contract in ARCHITECTURE.md) as real OTLP protobuf,
for the sampling benchmark, `replay` examples and tests: 8-12 spans per `reco.generate` trace, a few percent
of them "special" (error, fallback, cold start, popularity strategy, slow)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from processor.otlp_values import add_attribute as _attr

SPECIAL_KINDS = ("error", "exception", "fallback", "cold_start", "popularity", "slow")
CHILDREN = ("reco.fetch_user_history", "reco.fetch_candidates", "reco.score_candidates", "reco.fetch_embeddings",
            "reco.model_inference", "reco.post_process", "reco.rerank", "reco.filter_seen", "reco.dedupe",
            "reco.log_impressions", "reco.load_features")
BASE_NS = 1_750_000_000_000_000_000


@dataclass
class Trace:
    trace_id: bytes
    kind: str
    spans: list[Span] = field(default_factory=list)



def make_trace(rng: random.Random, kind: str = "ordinary", nspans: int | None = None,
               start_ns: int = BASE_NS) -> Trace:
    """One `reco.generate` trace: root (SERVER) + children; `kind` picks what makes it special."""
    trace_id = rng.randbytes(16)
    nspans = nspans or rng.randint(8, 12)
    duration = rng.randint(20, 120) * 1_000_000 if kind != "slow" else rng.randint(600, 1500) * 1_000_000
    root = Span(trace_id=trace_id, span_id=rng.randbytes(8), name="reco.generate", kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + duration)
    for key, value in (("reco.request_id", f"req-{rng.getrandbits(48):012x}"),
                       ("reco.placement", rng.choice(("home", "product_page", "cart", "email"))),
                       ("reco.model_version", "cf-2026.11.3"), ("experiment.variant", rng.choice("AB")),
                       ("reco.strategy", "popularity" if kind == "popularity" else "cf"),
                       ("reco.cold_start", kind == "cold_start"), ("reco.fallback", kind == "fallback"),
                       ("reco.num_candidates", rng.randint(200, 2000)), ("reco.num_results", 10),
                       ("user.id", f"u{rng.getrandbits(32)}"), ("client.address", "10.1.2.3")):
        _attr(root, key, value)
    if kind == "error":
        root.status.code = Status.STATUS_CODE_ERROR
        root.status.message = "scoring failed"
    trace = Trace(trace_id, kind)
    step = duration // nspans
    for i in range(nspans - 1):
        child = Span(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root.span_id,
                     name=CHILDREN[i % len(CHILDREN)], kind=Span.SPAN_KIND_INTERNAL,
                     start_time_unix_nano=start_ns + i * step, end_time_unix_nano=start_ns + (i + 1) * step)
        _attr(child, "reco.placement", "home")
        if child.name == "reco.fetch_embeddings":
            _attr(child, "reco.cache_hit", rng.random() < 0.8)
        if kind == "exception" and i == 2:
            event = child.events.add(name="exception", time_unix_nano=child.end_time_unix_nano)
            _attr(event, "exception.type", "TimeoutError")  # type: ignore[arg-type]
        trace.spans.append(child)
    trace.spans.append(root)  # children end first, so SDKs export the root last
    return trace


def make_traces(seed: int, count: int, special_fraction: float = 0.04) -> list[Trace]:
    rng = random.Random(seed)
    return [make_trace(rng, rng.choice(SPECIAL_KINDS) if rng.random() < special_fraction else "ordinary")
            for _ in range(count)]


def to_requests(spans: list[Span], per_request: int = 500,
                service: str = "recommendation-service") -> list[ExportTraceServiceRequest]:
    """Pack spans (in order) into export requests of `per_request` spans under one resource and scope."""
    out = []
    for i in range(0, len(spans), per_request):
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        _attr(rs.resource, "service.name", service)  # type: ignore[arg-type]
        ss = rs.scope_spans.add()
        ss.scope.name = "recommender"
        ss.spans.extend(spans[i:i + per_request])
        out.append(request)
    return out


def all_spans(traces: list[Trace]) -> list[Span]:
    return [span for trace in traces for span in trace.spans]


def log_request(records: list[tuple[bytes, int, str]], service: str = "recommendation-service"
                ) -> ExportLogsServiceRequest:
    """A logs request of (trace_id or b"", severity_number, body) records."""
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    _attr(rl.resource, "service.name", service)  # type: ignore[arg-type]
    sl = rl.scope_logs.add()
    sl.scope.name = "recommender"
    for trace_id, severity, body in records:
        record = LogRecord(time_unix_nano=BASE_NS, severity_number=severity, trace_id=trace_id)
        record.body.string_value = body
        sl.log_records.append(record)
    return request
