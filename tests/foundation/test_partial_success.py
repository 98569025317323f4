"""Spans a stage cannot accept are refused alone, as OTLP partial success; the rest of the request goes on."""

from __future__ import annotations

from otlp_peers import wait_until
from test_hop_bad_input import call

from processor.signals import REQUEST_TYPES, RESPONSE_TYPES

SAMPLING = """
exporter: {{endpoint: {downstream}}}
pipeline:
  - type: tail_sampling
    policies: {policies}
    root_grace: 100ms
    decision_wait: 1s
"""


def test_spans_with_invalid_trace_ids_are_partially_rejected(tmp_path, downstream, start_hop) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  - {name: everything, type: always}\n")
    hop = start_hop(SAMPLING.format(downstream=downstream.endpoint, policies=policies))
    request = REQUEST_TYPES["traces"]()
    spans = request.resource_spans.add().scope_spans.add().spans
    for trace_id in (b"", b"\x00" * 16, b"\x01" * 8, b"\x02" * 17):
        spans.add(trace_id=trace_id, span_id=b"\x03" * 8, name="bad")
    spans.add(trace_id=b"\x04" * 16, span_id=b"\x05" * 8, name="good")
    raw = call(hop.endpoint, "traces", request.SerializeToString())
    assert isinstance(raw, bytes)
    response = RESPONSE_TYPES["traces"].FromString(raw)
    assert response.partial_success.rejected_spans == 4
    assert "trace id" in response.partial_success.error_message
    wait_until(lambda: [s.name for s in downstream.spans()] == ["good"], "only the good span downstream",
               seen=lambda: [s.name for s in downstream.spans()])
