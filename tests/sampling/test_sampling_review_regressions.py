"""Regressions from a code review: look-alike bytes in strings, interned groups that outlive their data."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from sampling_helpers import Harness


def test_string_ending_in_an_attribute_pattern_does_not_wedge_the_buffer() -> None:
    """A status message ending with the bytes of `url.path` + value tag used to raise on every flush."""
    h = Harness()
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="x")
    span.status.message = "hello" + (KeyValue(key="url.path").SerializeToString() + b"\x12").decode()
    h.send(request)
    for k in range(5):  # ordinary traces behind it must still be decided
        later = ExportTraceServiceRequest()
        later.resource_spans.add().scope_spans.add().spans.add(
            trace_id=bytes([9, k]) + b"\x01" * 14, span_id=b"\x02" * 8, name="y")
        h.send(later)
    h.advance(30)
    assert len(h.stage.store.traces) == 0


def test_groups_of_refused_spans_are_not_kept() -> None:
    h = Harness()
    for i in range(200):
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="host.name").value.string_value = f"pod-{i}"
        rs.scope_spans.add().spans.add(trace_id=b"", span_id=b"\x02" * 8, name="no trace id")
        h.send(request)
    assert len(h.stage.store.groups.by_id) == 0
