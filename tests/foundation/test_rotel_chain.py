"""rotel (a real Rust OTLP collector) in the chain: SDK → rotel → recohop → sink and SDK → recohop → rotel → sink."""

from __future__ import annotations

from rotel_fixture import start_rotel
from sdk_clients import send_spans
from test_hop_passthrough import PASSTHROUGH


def test_rotel_before_recohop(tmp_path, downstream, start_hop) -> None:
    hop = start_hop(PASSTHROUGH.format(downstream=downstream.endpoint))
    with start_rotel(hop.endpoint, tmp_path / "rotel") as rotel:
        sent = send_spans(rotel.grpc_endpoint, 200)
        downstream.wait_for_spans(len(sent), timeout=30)
    assert sorted(s.SerializeToString() for s in downstream.spans()) == sorted(sent)


def test_rotel_after_recohop(tmp_path, downstream, start_hop) -> None:
    with start_rotel(downstream.endpoint, tmp_path / "rotel") as rotel:
        hop = start_hop(PASSTHROUGH.format(downstream=rotel.grpc_endpoint))
        sent = send_spans(hop.endpoint, 200)
        downstream.wait_for_spans(len(sent), timeout=30)
    assert sorted(s.SerializeToString() for s in downstream.spans()) == sorted(sent)


def test_rotel_recohop_rotel_chain_with_the_default_pipeline(tmp_path, downstream, start_hop) -> None:
    """SDK → rotel (agent stand-in) → recohop (built-in default pipeline) → rotel (backend stand-in) → sink:
    error traces arrive whole, redacted, with the deciding policy on the root."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    with start_rotel(downstream.endpoint, tmp_path / "rotel-out") as rotel_out:
        hop = start_hop(None, extra_args=["--forward", rotel_out.grpc_endpoint])
        with start_rotel(hop.endpoint, tmp_path / "rotel-in") as rotel_in:
            sent = send_spans(rotel_in.grpc_endpoint, 30, error=True)
            downstream.wait_for_spans(len(sent), timeout=30)
    roots = [s for s in downstream.spans() if not s.parent_span_id]
    assert len(roots) == 30
    for root in roots:
        assert root.status.code == Status.STATUS_CODE_ERROR
        policy = [a.value.string_value for a in root.attributes if a.key == "sampling.policy"]
        assert policy == ["errors"]
