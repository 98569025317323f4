"""One meaning for every valid encoding: the native trace store decides on the bytes otelcol sends (fields in
reverse order: a KeyValue's value before its key) and on other valid non-canonical encodings exactly as on the
canonical bytes, and as the protobuf parser reads them. Found by the end-to-end chain test: behind otelcol, every
fallback and most cold-start traces were dropped."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sampling_helpers import DEFAULT_POLICIES, Harness
from test_sampling_store import ALL_KINDS, harness, policy_file, span_requests
from wire_encodings import field_bytes, reversed_fields, varint

from bench.sampling_workload import all_spans, make_traces, to_requests
from processor.otlp_values import kv
from processor.sampling import native_store

needs_store = pytest.mark.skipif(not native_store.available(), reason="native trace store not built")


def decide(h: Harness, requests: list[bytes]) -> list[tuple[bytes, bool, str]]:
    """Feed serialized requests on the byte path (as the receiver does) and decide everything."""
    for raw in requests:
        h.stage.on_trace_bytes(raw)
    h.advance(15, step=1.0)
    h.shutdown()
    return sorted(h.decisions)


@needs_store
def test_otelcol_field_order_decides_like_canonical_bytes_on_the_recommender_workload(
        monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [r for r in to_requests(all_spans(make_traces(5, 800)), per_request=200)]
    canonical = decide(harness(True, DEFAULT_POLICIES, monkeypatch), [r.SerializeToString() for r in requests])
    reordered = decide(harness(True, DEFAULT_POLICIES, monkeypatch), [reversed_fields(r) for r in requests])
    assert reordered == canonical
    kept_by = {policy for _, kept, policy in canonical if kept}
    assert {"fallback", "errors"} <= kept_by, kept_by


@needs_store
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=span_requests())
def test_otelcol_field_order_decides_like_the_parser(raw: bytes, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path_factory: Any) -> None:
    policies = policy_file(tmp_path_factory.mktemp("p"), ALL_KINDS)
    reordered = reversed_fields(ExportTraceServiceRequest.FromString(raw))
    assert ExportTraceServiceRequest.FromString(reordered) == ExportTraceServiceRequest.FromString(raw)
    native = decide(harness(True, policies, monkeypatch), [reordered])
    python = decide(harness(False, policies, monkeypatch), [raw])
    assert native == python


def span_with(attribute: bytes, status: bytes = b"") -> bytes:
    """A root span of its own trace, with one hand-encoded attribute (and status) field appended."""
    span = Span(trace_id=bytes([len(attribute) % 250 + 1]) * 16, span_id=b"\x01" * 8, name="reco.generate",
                start_time_unix_nano=10**18, end_time_unix_nano=10**18 + 1_000_000)
    span_bytes = span.SerializeToString() + field_bytes(9, attribute) + status
    return field_bytes(1, field_bytes(2, field_bytes(2, span_bytes)))


KEY = field_bytes(1, b"reco.fallback")
ODD_ENCODINGS = {
    "value before key": field_bytes(2, b"\x10\x01") + KEY,
    "bool as varint 2": KEY + field_bytes(2, b"\x10\x02"),
    "overlong bool varint": KEY + field_bytes(2, b"\x10\x81\x80\x00"),
    "value split over two fields": KEY + field_bytes(2, b"\x0a\x01x") + field_bytes(2, b"\x10\x01"),
    "key given twice": field_bytes(1, b"other") + KEY + field_bytes(2, b"\x10\x01"),
    "unknown field in the value": KEY + field_bytes(2, b"\x10\x01" + varint(9 << 3) + b"\x05"),
    "wrong wire type skipped": KEY + field_bytes(2, b"\x10\x01" + varint(3 << 3 | 2) + b"\x00"),
}


@needs_store
@pytest.mark.parametrize("name", sorted(ODD_ENCODINGS))
def test_non_canonical_fallback_attribute_keeps_the_trace(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = span_with(ODD_ENCODINGS[name])
    parsed = ExportTraceServiceRequest.FromString(raw)  # the parser's reading: reco.fallback = true
    (attribute,) = parsed.resource_spans[0].scope_spans[0].spans[0].attributes
    assert (attribute.key, attribute.value.WhichOneof("value"), attribute.value.bool_value) == (
        "reco.fallback", "bool_value", True)
    native = decide(harness(True, DEFAULT_POLICIES, monkeypatch), [raw])
    python = decide(harness(False, DEFAULT_POLICIES, monkeypatch), [raw])
    assert native == python and native[0][1:] == (True, "fallback")


@needs_store
def test_second_status_field_merges_like_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """status {code: ERROR} then status {message: "x"}: merged, the code stays ERROR; the other way round too."""
    error, message_only = field_bytes(15, b"\x18\x02"), field_bytes(15, b"\x12\x01x")
    for status in (error + message_only, message_only + error):
        raw = span_with(kv("other", 1).SerializeToString(), status)
        parsed = ExportTraceServiceRequest.FromString(raw)
        assert parsed.resource_spans[0].scope_spans[0].spans[0].status.code == 2
        native = decide(harness(True, DEFAULT_POLICIES, monkeypatch), [raw])
        assert native[0][1:] == (True, "errors")
