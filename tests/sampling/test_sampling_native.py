"""The native tail-sampling intake (`processor/native/_sampling.c`) against the pure-Python intake: the same
requests give the same decisions and the same bytes sent on, on the recommender workload and on random input."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from sampling_helpers import Harness
from wire_encodings import field_bytes

from bench.sampling_workload import all_spans, make_traces, to_requests
from processor.native import load
from processor.sampling import buffer as buffer_module
from processor.sampling.policies.attribute import encoded_pair
from processor.stages import tail_sampling as stage_module

NATIVE = load("sampling")


def test_native_intake_is_built_and_used() -> None:
    if NATIVE is None and os.environ.get("RECOHOP_NATIVE") == "0":
        pytest.skip("native scanners disabled by RECOHOP_NATIVE=0")
    assert NATIVE is not None, "processor.native._sampling is not built (pip install -e .)"
    assert buffer_module._native is NATIVE


def run(requests: list[bytes], native: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list, Counter, dict]:
    """Decisions, spans sent on (serialized, counted) and the buffer's facts per trace before deciding."""
    with monkeypatch.context() as patch:
        patch.setattr(buffer_module, "_native", NATIVE if native else None)
        patch.setattr(stage_module, "native_store_available", lambda: False)  # this compares TraceBuffer intakes
        h = Harness()
        for raw in requests:
            h.send(ExportTraceServiceRequest.FromString(raw))
        facts = {}
        gates = {key: g for _, key, g in h.stage.buffer.native_keys}
        for tid, entry in h.stage.buffer.traces.items():
            h.stage.buffer.complete(entry)
            facts[tid] = (entry.nspans, entry.nbytes, entry.error, entry.exception, entry.root is not None,
                          entry.durations or None, policy_visible(entry.span_attrs, gates),
                          entry.res_attrs)
        h.advance(15, step=1.0)
        h.shutdown()
    sent: Counter = Counter()
    for request in h.traces:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    sent[(rs.resource.SerializeToString(), ss.scope.SerializeToString(),
                          span.SerializeToString())] += 1
    return sorted(h.decisions), sent, facts


def policy_visible(attrs: dict[str, list[Any]] | None, gates: dict[str, tuple[bytes, ...] | None]) -> dict:
    """The attribute values a policy can match: with exact-value tests (gates) only those values count, and the
    Python intake reads the other values of a gated key too, which can never match."""
    out = {}
    for key, values in (attrs or {}).items():
        if gates.get(key) is not None:
            values = [v for v in values if isinstance(v, (str, bool)) and encoded_pair(key, v) in gates[key]]
        if values:
            out[key] = sorted(map(repr, values))
    return out


@pytest.mark.skipif(NATIVE is None, reason="native scanner not built")
def test_same_decisions_and_bytes_on_the_recommender_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    traces = make_traces(11, 3000)
    requests = [r.SerializeToString() for r in to_requests(all_spans(traces), per_request=500)]
    native = run(requests, True, monkeypatch)
    python = run(requests, False, monkeypatch)
    assert native[0] == python[0]
    assert native[1] == python[1]
    assert native[2] == python[2]
    assert sum(1 for _, kept, _ in native[0] if kept) > 50


def any_values() -> st.SearchStrategy[AnyValue]:
    return st.one_of(
        st.builds(lambda v: AnyValue(string_value=v), st.sampled_from(["true", "popularity", "cf", "", "é"])),
        st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
        st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: AnyValue(double_value=v), st.floats(allow_nan=False)),
        st.just(AnyValue()),
    )


KEYS = ["reco.fallback", "reco.cold_start", "reco.strategy", "other", "reco.placement"]
NAMES = ["reco.generate", "reco.fetch_candidates", "x", ""]
TRACE_IDS = [b"\x01" * 16, b"\x02" * 16, bytes(16), b"", b"\x03" * 8, b"\x04" * 16]


@st.composite
def spans(draw: Any) -> Span:
    span = Span(trace_id=draw(st.sampled_from(TRACE_IDS)), span_id=draw(st.binary(min_size=0, max_size=8)),
                parent_span_id=draw(st.sampled_from([b"", b"\x09" * 8])), name=draw(st.sampled_from(NAMES)),
                kind=draw(st.integers(0, 5)), start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                end_time_unix_nano=draw(st.integers(0, 2**64 - 1)))
    for _ in range(draw(st.integers(0, 4))):
        span.attributes.append(KeyValue(key=draw(st.sampled_from(KEYS)), value=draw(any_values())))
    for _ in range(draw(st.integers(0, 2))):
        span.events.add(name=draw(st.sampled_from(["exception", "log", ""])))
    if draw(st.booleans()):
        span.status.CopyFrom(Status(code=draw(st.integers(0, 2)), message="m"))
    return span


@st.composite
def requests(draw: Any) -> bytes:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 3))):
        rs = request.resource_spans.add()
        if draw(st.booleans()):
            rs.resource.attributes.add(key="service.name").value.string_value = draw(st.sampled_from(["a", "b"]))
        rs.schema_url = draw(st.sampled_from(["", "s"]))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.sampled_from(["", "lib"]))
            ss.spans.extend(draw(st.lists(spans(), max_size=12)))
    return request.SerializeToString()


@pytest.mark.skipif(NATIVE is None, reason="native scanner not built")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(requests(), min_size=1, max_size=4))
def test_same_results_on_random_requests(batch: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    native = run(batch, True, monkeypatch)
    python = run(batch, False, monkeypatch)
    assert native == python


@pytest.mark.skipif(NATIVE is None, reason="native scanner not built")
@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=400))
def test_scanner_never_crashes_on_garbage(raw: bytes) -> None:
    result = NATIVE.scan(raw, ((b"reco.generate", "reco.generate"),), ((b"reco.fallback", "reco.fallback", None),))
    assert result is None or isinstance(result, tuple)


@pytest.mark.skipif(NATIVE is None, reason="native scanner not built")
@pytest.mark.parametrize(("values", "expected"), [
    ([b"\x0a\x04cart", b""], "cart"),  # a second, empty occurrence leaves the first member
    ([b"", b"\x0a\x04cart"], "cart"),
    ([b"\x0a\x04cart", b"\x18\x03"], 3),  # the member set last wins
    ([b"\x0a\x04cart", b"\x32\x00"], None),  # ... also when it is a kvlist
])
def test_a_value_given_twice_is_merged_like_the_parser(values: list[bytes], expected: Any) -> None:
    """KeyValue.value written twice means the merge of both (found by the fuzzer's non-canonical encodings: the
    intake scanner read only the last occurrence, so a split value lost its string)."""
    kv_bytes = field_bytes(1, b"reco.placement") + b"".join(field_bytes(2, v) for v in values)
    span = Span(trace_id=b"\x07" * 16, span_id=b"\x01" * 8, name="s").SerializeToString() + field_bytes(9, kv_bytes)
    raw = field_bytes(1, field_bytes(2, field_bytes(2, span)))
    (attribute,) = ExportTraceServiceRequest.FromString(raw).resource_spans[0].scope_spans[0].spans[0].attributes
    parsed = AnyValue()
    parsed.CopyFrom(attribute.value)
    which = parsed.WhichOneof("value")
    assert (getattr(parsed, which) if which in ("string_value", "int_value") else None) == expected
    scanned = NATIVE.scan(raw, (), ((b"reco.placement", "reco.placement", None),))
    assert scanned is not None
    (_, _, runs), = scanned[0]
    assert runs[0][-1] == {"reco.placement": [expected]}
