"""Kept traces serialized by the native store (`_tracestore.Store.emit_kept`, `NativeStore.emit_kept`): the root
gets its policy's mark, a trace kept by probability the threshold in every span's tracestate, and what the store
leaves to Python (no root, a span with a tracestate of its own) goes through `Outbox.add_trace`. Either way the
bytes sent on must parse to what the pure-Python path sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from test_sampling_store import compare, needs_store, policy_file

from processor.sampling.native_store import NativeStore

KEEP_BY_ATTRIBUTE_OR_PROBABILITY = """
policies:
  - {name: flagged, type: attribute, key: keep, value: true}
  - {name: baseline, type: probabilistic, percentage: 100}
"""


def trace(n: int, *, root: bool = True, flagged: bool = False, tracestate: str = "") -> list[Span]:
    """A trace of three spans (the first its root unless `root` is false), each in the given tracestate."""
    tid = bytes([n]) * 16
    spans = []
    for i in range(3):
        span = Span(trace_id=tid, span_id=bytes([n, i + 1]) * 4, name=f"op{i}", trace_state=tracestate,
                    start_time_unix_nano=1_000, end_time_unix_nano=2_000)
        if i or not root:
            span.parent_span_id = bytes([n, 9]) * 4
        if flagged:
            span.attributes.add(key="keep").value.bool_value = True
        spans.append(span)
    return spans


def request(spans: list[Span]) -> bytes:
    """Two (resource, scope) groups: the spans alternate between them, so a trace spans both."""
    out = ExportTraceServiceRequest()
    for service in ("a", "b"):
        rs = out.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = service
        rs.scope_spans.add().scope.name = "lib"
    for i, span in enumerate(spans):
        out.resource_spans[i % 2].scope_spans[0].spans.append(span)
    return out.SerializeToString()


@pytest.fixture
def left_to_python(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many kept rows each `NativeStore.emit_kept` left to Python (appended per call)."""
    counts: list[int] = []
    emit = NativeStore.emit_kept

    def counting(self: NativeStore, *args: Any) -> np.ndarray:
        left = emit(self, *args)
        counts.append(len(left))
        return left
    monkeypatch.setattr(NativeStore, "emit_kept", counting)
    return counts


@needs_store
def test_marked_and_thresholded_traces_are_serialized_by_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left_to_python: list[int]) -> None:
    spans = trace(1, flagged=True) + trace(2) + trace(3) + trace(4, flagged=True)
    native, _ = compare([("spans", request(spans)), ("advance", 20.0)],
                        policy_file(tmp_path, KEEP_BY_ATTRIBUTE_OR_PROBABILITY), monkeypatch)
    assert sum(left_to_python) == 0
    sent = [ExportTraceServiceRequest.FromString(r.SerializeToString()) for r in native.traces]
    out = [s for r in sent for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(out) == 12
    for span in out:
        marked = [kv.value.string_value for kv in span.attributes if kv.key == "sampling.policy"]
        flagged = span.trace_id[0] in (1, 4)
        assert marked == ([] if span.parent_span_id else ["flagged" if flagged else "baseline"])
        assert span.trace_state == ("" if flagged else "ot=th:0")


@needs_store
def test_rootless_traces_and_own_tracestates_are_left_to_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left_to_python: list[int]) -> None:
    spans = (trace(1, root=False, flagged=True) + trace(2, tracestate="ot=th:8;rv:abcdefabcdefab,vendor=x")
             + trace(3, root=False) + trace(4))
    compare([("spans", request(spans)), ("advance", 20.0)],
            policy_file(tmp_path, KEEP_BY_ATTRIBUTE_OR_PROBABILITY), monkeypatch)
    assert sum(left_to_python) == 3  # all but trace 4
