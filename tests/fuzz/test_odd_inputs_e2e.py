"""What the scanner review found, through running default hops (issue 20): a value no generalisation can read costs
that value only (it used to refuse the whole request with INTERNAL), and requests in other valid encodings
(fields in any order, messages split in two, junk values overridden, overlong varints, unknown fields) give the
same kept spans, the same redaction and the same derived metrics as protobuf's own encoding."""

from __future__ import annotations

import math
import urllib.request

import grpc
import pytest
from noncanonical import reencode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from otlp_peers import CaptureServer, wait_until, wait_until_drained
from wire_encodings import reversed_fields

from bench.sampling_workload import all_spans, make_traces, to_requests
from processor.otlp_values import kv

pytestmark = pytest.mark.slow

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
KEY = {"RECOHOP_PSEUDONYM_KEY": "odd-inputs-pseudonym-key-0123456789"}
POISON = ["².1.1.1", "١.٢.٣.٤", "1.2.3.٤"]


def export(endpoint: str, raw: bytes) -> bytes:
    with grpc.insecure_channel(endpoint) as channel:
        return channel.unary_unary(EXPORT)(raw, timeout=30)


def test_a_value_no_generalisation_reads_costs_that_value_only(downstream, start_hop) -> None:  # noqa: ANN001
    hop = start_hop(None, extra_args=["--forward", downstream.endpoint], env=KEY)
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i, value in enumerate(POISON + ["10.1.2.3"]):
        span = spans.add(trace_id=bytes([i + 1]) * 16, span_id=bytes([i + 1]) * 8, name="reco.generate",
                         start_time_unix_nano=1, end_time_unix_nano=2,
                         status=Status(code=Status.STATUS_CODE_ERROR))  # kept by the errors policy
        span.attributes.extend([kv("client.address", value), kv("reco.placement", "home")])
    export(hop.endpoint, request.SerializeToString())  # was: INTERNAL, the whole request refused
    downstream.wait_for_spans(len(POISON) + 1, timeout=30)
    addresses = sorted(a.value.string_value for s in downstream.spans() for a in s.attributes
                       if a.key == "client.address")
    assert addresses == ["10.1.2.0/24"] + ["<ip>"] * len(POISON)
    assert not any(p.encode() in raw for p in POISON for raw in downstream.raw["traces"])
    assert not any(p in hop.log() for p in POISON)


def derived(metrics_url: str) -> dict[str, float]:
    """The derived-metric samples on /metrics (the hop's own counters aside)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(("traces_span_metrics_", "reco_")) and "_created" not in line}


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal series and values (sums of seconds to the last bits: they are added in different orders)."""
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9) for k in a)


def _one_span_requests(capture: CaptureServer) -> ExportTraceServiceRequest:
    """Every span that arrived, one (resource, scope, span) per ResourceSpans, sorted: how the spans were grouped
    into requests is not part of their meaning, nor are unknown fields (the hop passes them on as they came)."""
    out = ExportTraceServiceRequest()
    items = []
    for request in capture.requests("traces"):
        request.DiscardUnknownFields()
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    one = out.resource_spans.add()
                    one.resource.CopyFrom(rs.resource)
                    scope = one.scope_spans.add()
                    scope.scope.CopyFrom(ss.scope)
                    scope.spans.add().CopyFrom(span)
                    items.append(one.SerializeToString(deterministic=True))
    out.Clear()
    for raw in sorted(items):
        out.resource_spans.add().MergeFromString(raw)
    return out


def test_odd_encodings_mean_what_protobufs_own_encoding_means(downstream, start_hop) -> None:  # noqa: ANN001
    requests = to_requests(all_spans(make_traces(3, 120, special_fraction=0.3)), per_request=60)
    for request in requests:  # PII the redaction stage must treat alike in every encoding
        for rs in request.resource_spans:
            for span in rs.scope_spans[0].spans:
                if not span.parent_span_id:
                    span.attributes.extend([kv("user.id", f"u-{span.trace_id[0]}"), kv("client.address", "10.9.8.7")])
    odd_capture = CaptureServer().start()
    try:
        plain = start_hop(None, extra_args=["--forward", downstream.endpoint], env=KEY, name="plain")
        odd = start_hop(None, extra_args=["--forward", odd_capture.endpoint], env=KEY, name="odd")
        for i, request in enumerate(requests):
            export(plain.endpoint, request.SerializeToString())
            odd_raw = reversed_fields(request) if i % 2 else reencode(request, seed=i, rate=0.5)
            assert odd_raw is not None and odd_raw != request.SerializeToString()
            export(odd.endpoint, odd_raw)
        for hop, capture in ((plain, downstream), (odd, odd_capture)):
            wait_until_drained(hop, capture, timeout=60)
        assert plain.metrics_url and odd.metrics_url
        wait_until(lambda: same_metrics(derived(plain.metrics_url), derived(odd.metrics_url)),
                   "the same derived metrics", timeout=30,
                   seen=lambda: set(derived(plain.metrics_url).items()) ^ set(derived(odd.metrics_url).items()))
        assert any(line.startswith("reco_requests_total") for line in derived(plain.metrics_url))
        plain_spans, odd_spans = _one_span_requests(downstream), _one_span_requests(odd_capture)
        assert len(plain_spans.resource_spans) > 10
        assert plain_spans == odd_spans
        assert b"10.9.8.7" not in plain_spans.SerializeToString()
    finally:
        odd_capture.stop()
