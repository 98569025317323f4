"""The limits check in C (`processor/native/_limits.c`) against the pure-Python reference
(`processor/limits/check.py`): the same counts and the same bytes sent on, on the benchmark workload and on random
requests (every AnyValue kind, nested arrays / kvlists, events, links, odd ids, any timestamps)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from otlp_strategies import any_values
from prometheus_client import CollectorRegistry

from bench.workload import generate
from processor.limits import check as check_module
from processor.limits.check import Counts, scan_bytes, scan_message
from processor.limits.fix import utf8_cut
from processor.limits.settings import Limits
from processor.native import load
from processor.stages.base import StageContext, TracesRequest
from processor.stages.limits import LimitsStage

NATIVE = load("limits")
NOW = 1_760_000_000_000_000_000
needs_native = pytest.mark.skipif(NATIVE is None, reason="native scanner not built")


def test_native_check_is_built_and_used() -> None:
    if NATIVE is None and os.environ.get("RECOHOP_NATIVE") == "0":
        pytest.skip("native scanners disabled by RECOHOP_NATIVE=0")
    assert NATIVE is not None, "processor.native._limits is not built (pip install -e .)"
    assert check_module._native is NATIVE


def run_stage(raw: bytes, limits: Limits, native: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list, dict, str]:
    """What the stage sends on, the refusals it reported and its self-metrics, with or without the C check."""
    with monkeypatch.context() as patch:
        patch.setattr(check_module, "_native", NATIVE if native else None)
        registry = CollectorRegistry()
        ctx = StageContext(registry=registry)
        stage = LimitsStage(limits, ctx, clock_ns=lambda: NOW)
        out = stage.on_trace_bytes(raw)
        metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for m in registry.collect() for s in m.samples if s.name.endswith("_total")}
        return out, dict(ctx.rejections.reasons), repr(sorted(metrics.items()))


@needs_native
def test_same_counts_and_identity_on_the_benchmark_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    workload = generate(requests=8)
    limits = Limits()
    window = limits.time_window(NOW)
    for raw in workload.requests:
        native = scan_bytes(raw, limits, window)
        assert native == scan_message(TracesRequest.FromString(raw), limits, window)
        assert native is not None and native.spans > 0 and not native.needs_fix()
        out, _, _ = run_stage(raw, limits, True, monkeypatch)
        assert len(out) == 1 and out[0] is raw  # passed on as the very same object
    # Tight limits make the workload's spans need fixing: both paths must still agree byte for byte.
    tight = Limits(max_attributes_per_span=3, max_attribute_value_length=6, max_attributes_per_resource=2,
                   max_events_per_span=0, max_links_per_span=0)
    for raw in workload.requests[:2]:
        native = scan_bytes(raw, tight, window)
        assert native == scan_message(TracesRequest.FromString(raw), tight, window)
        assert native is not None and native.span_attributes and native.values and native.resource_attributes
        assert run_stage(raw, tight, True, monkeypatch) == run_stage(raw, tight, False, monkeypatch)


KEY_VALUES = st.builds(KeyValue, key=st.sampled_from(["k", "user.email", "é", ""]), value=any_values(2))
ATTRIBUTES = {n: st.lists(KEY_VALUES, max_size=n) for n in (3, 4, 5)}  # built once: hypothesis caches them


def attributes(max_size: int = 5) -> st.SearchStrategy[list[KeyValue]]:
    return ATTRIBUTES[max_size]


IDS16 = [b"\x01" * 16, bytes(16), b"", b"\x03" * 8, b"\x04" * 17, b"\x00" * 15 + b"\x01"]
IDS8 = [b"\x02" * 8, bytes(8), b"", b"\x05" * 4, b"\x06" * 9]
TIMES = [0, 1, NOW - 40 * 86400 * 10**9, NOW - 1000, NOW, NOW + 10**9, NOW + 2 * 3600 * 10**9, 2**64 - 1]


@st.composite
def spans(draw: Any) -> Span:
    span = Span(trace_id=draw(st.sampled_from(IDS16)), span_id=draw(st.sampled_from(IDS8)),
                parent_span_id=draw(st.sampled_from([b"", b"\x09" * 8, bytes(8), b"\x01" * 3])),
                name=draw(st.text(max_size=5)), start_time_unix_nano=draw(st.sampled_from(TIMES)),
                end_time_unix_nano=draw(st.sampled_from(TIMES)),
                dropped_attributes_count=draw(st.integers(0, 3)), dropped_events_count=draw(st.integers(0, 3)))
    span.attributes.extend(draw(attributes()))
    for _ in range(draw(st.integers(0, 3))):
        span.events.add(name=draw(st.sampled_from(["exception", ""])), time_unix_nano=draw(st.sampled_from(TIMES)),
                        attributes=draw(attributes(3)))
    for _ in range(draw(st.integers(0, 3))):
        span.links.add(trace_id=draw(st.sampled_from(IDS16)), span_id=draw(st.sampled_from(IDS8)),
                       attributes=draw(attributes(3)), dropped_attributes_count=draw(st.integers(0, 2)))
    return span


@st.composite
def requests(draw: Any) -> bytes:
    request = TracesRequest()
    for _ in range(draw(st.integers(1, 3))):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(draw(attributes(4)))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.sampled_from(["", "lib"]))
            ss.scope.attributes.extend(draw(attributes(3)))
            ss.spans.extend(draw(st.lists(spans(), max_size=6)))
    return request.SerializeToString()


limit_sets = st.builds(
    Limits, max_attributes_per_span=st.integers(0, 4), max_attribute_value_length=st.integers(0, 10),
    max_events_per_span=st.integers(0, 3), max_links_per_span=st.integers(0, 3),
    max_attributes_per_event=st.integers(0, 3), max_attributes_per_link=st.integers(0, 3),
    max_attributes_per_resource=st.integers(0, 3), max_age=st.sampled_from([1.0, 30 * 86400.0]),
    max_future=st.sampled_from([1.0, 3600.0]))


@needs_native
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=requests(), limits=limit_sets)
def test_same_results_on_random_requests(raw: bytes, limits: Limits, monkeypatch: pytest.MonkeyPatch) -> None:
    window = limits.time_window(NOW)
    native = scan_bytes(raw, limits, window)
    python = scan_message(TracesRequest.FromString(raw), limits, window)
    assert native == python
    native_run = run_stage(raw, limits, True, monkeypatch)
    assert native_run == run_stage(raw, limits, False, monkeypatch)
    # What was sent on is within the limits and holds only valid spans; nothing valid was lost.
    sent = [TracesRequest.FromString(r) for r in native_run[0]]
    after = sum((scan_message(r, limits, window) for r in sent), Counts())
    assert after.refused() == 0 and not after.needs_fix()
    assert after.spans == python.spans - python.refused()


def test_counts_add_up_field_by_field() -> None:
    assert sum((Counts(spans=1), Counts(spans=2, values=1)), Counts()) == Counts(spans=3, values=1)


@needs_native
@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_scanner_never_crashes_on_garbage(raw: bytes) -> None:
    result = NATIVE.scan(raw, Limits().native_tuple(), 0, 2**64 - 1)
    assert result is None or (isinstance(result, tuple) and len(result) == len(Counts._fields))


@given(text=st.text(max_size=30), max_len=st.integers(0, 40))
def test_utf8_cut_keeps_whole_characters(text: str, max_len: int) -> None:
    cut = utf8_cut(text, max_len)
    assert len(cut.encode()) <= max_len
    assert text.startswith(cut)
    assert len(cut.encode()) > max_len - 4 or cut == text


def test_on_traces_gives_the_same_as_the_byte_path(monkeypatch: pytest.MonkeyPatch) -> None:
    request = TracesRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="ok").attributes.add(key="k").value.string_value = "é" * 9
    spans.add(trace_id=bytes(16), span_id=b"\x02" * 8, name="refused")
    limits = Limits(max_attribute_value_length=5)
    stage = LimitsStage(limits, StageContext(registry=CollectorRegistry()), clock_ns=lambda: NOW)
    (out,) = stage.on_traces(request)
    assert out.SerializeToString() == run_stage(request.SerializeToString(), limits, True, monkeypatch)[0][0]
    (span,) = out.resource_spans[0].scope_spans[0].spans
    assert span.name == "ok" and span.attributes[0].value.string_value == "éé"  # 4 of 5 bytes: no half "é"
    assert stage.ctx.rejections.count == 1


def test_bad_config_names_file_key_and_expectation() -> None:
    from processor.config_node import ConfigError, Node
    from processor.stages.limits import build

    node = Node({"max_attributes_per_span": -1}, "hop.yaml", "pipeline[0]")
    with pytest.raises(ConfigError) as error:
        build(node, StageContext(registry=CollectorRegistry()))
    assert "hop.yaml" in str(error.value) and "pipeline[0].max_attributes_per_span" in str(error.value)
    assert ">= 0" in str(error.value)
