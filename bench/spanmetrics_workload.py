"""Recommender-shaped OTLP span requests (the ARCHITECTURE.md telemetry contract), built directly as protobuf
so the benchmark and tests can make many fast, with the ground truth (`Reco`) kept alongside."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from processor.otlp_values import add_attribute as _attr

SERVICE = "recommendation-service"
PLACEMENTS = ("home", "product_page", "cart", "email")
CHILDREN = ("reco.fetch_user_history", "reco.fetch_candidates", "reco.score_candidates",
            "reco.fetch_embeddings", "reco.model_inference", "reco.post_process")
MS = 1_000_000


@dataclass
class Reco:
    """One recommendation request and what it should produce."""

    trace_id: bytes
    placement: str
    variant: str
    model_version: str
    cold_start: bool
    error: bool
    num_results: int
    root_ms: float
    cache_hit: bool
    clicks: list[int] = field(default_factory=list)  # positions clicked
    revenue: list[float] = field(default_factory=list)  # one per conversion



def make_recos(n: int, seed: int = 7) -> list[Reco]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = Reco(trace_id=rng.randbytes(16), placement=rng.choice(PLACEMENTS), variant=rng.choice("AB"),
                 model_version=rng.choice(("cf-v1", "cf-v2")), cold_start=rng.random() < 0.1,
                 error=rng.random() < 0.05, num_results=rng.choice((0, 1, 2, 5, 12)),
                 root_ms=rng.choice((3.0, 30.0, 300.0, 700.0)), cache_hit=rng.random() < 0.8)
        if not r.error:
            r.clicks = [rng.randint(1, 12) for _ in range(rng.choice((0, 0, 1, 2)))]
            r.revenue = [round(rng.uniform(5, 50), 2) for _ in r.clicks if rng.random() < 0.5]
        out.append(r)
    return out


def reco_spans(r: Reco, rng: random.Random, user_id: str = "u1", start_ns: int = 1_700_000_000_000_000_000
               ) -> list[Span]:
    """The reco.generate tree (children first, as an SDK exports them) plus click/conversion traces."""
    spans: list[Span] = []
    root = Span(trace_id=r.trace_id, span_id=rng.randbytes(8), name="reco.generate", kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + int(r.root_ms * MS))
    for name in CHILDREN:
        child = Span(trace_id=r.trace_id, span_id=rng.randbytes(8), parent_span_id=root.span_id, name=name,
                     kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=start_ns,
                     end_time_unix_nano=start_ns + 2 * MS)
        if name == "reco.fetch_embeddings":
            _attr(child, "reco.cache_hit", r.cache_hit)
            _attr(child, "reco.placement", r.placement)
        spans.append(child)
    for key, value in (("reco.request_id", rng.randbytes(6).hex()), ("reco.placement", r.placement),
                       ("reco.model_version", r.model_version), ("experiment.variant", r.variant),
                       ("reco.strategy", "popularity" if r.cold_start else "cf"), ("reco.cold_start", r.cold_start),
                       ("reco.fallback", False), ("reco.num_candidates", 200), ("reco.num_results", r.num_results),
                       ("user.id", user_id), ("user.email", f"{user_id}@example.com"),
                       ("client.address", "10.0.0.1")):
        _attr(root, key, value)
    if r.error:
        root.status.code = Status.STATUS_CODE_ERROR
        root.events.add(name="exception")
    spans.append(root)
    feedback = [("reco.click", p, None) for p in r.clicks] + [("reco.conversion", 1, v) for v in r.revenue]
    for name, position, revenue in feedback:
        s = Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name=name, kind=Span.SPAN_KIND_SERVER,
                 start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + MS)
        s.links.add(trace_id=r.trace_id, span_id=root.span_id)
        for key, value in (("reco.item_id", f"i{rng.randrange(10**6)}"), ("reco.position", position),
                           ("reco.placement", r.placement), ("reco.model_version", r.model_version),
                           ("experiment.variant", r.variant), ("user.id", user_id)):
            _attr(s, key, value)
        if revenue is not None:
            _attr(s, "reco.revenue", revenue)
        spans.append(s)
    return spans


def to_request(spans: list[Span], service: str = SERVICE) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    ss.scope.name = "recommender"
    ss.spans.extend(spans)
    return req


def requests_for(recos: list[Reco], batch: int = 50, seed: int = 1) -> list[ExportTraceServiceRequest]:
    rng = random.Random(seed)
    spans = [s for i, r in enumerate(recos) for s in reco_spans(r, rng, user_id=f"user-{i}")]
    return [to_request(spans[i:i + batch * 8]) for i in range(0, len(spans), batch * 8)]
