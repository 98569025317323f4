"""rotel (a real Rust OTLP collector) in the chain: SDK → rotel → recohop → sink and SDK → recohop → rotel → sink."""

from __future__ import annotations

from rotel_fixture import start_rotel
from sdk_clients import send_spans
from test_hop_passthrough import PASSTHROUGH, wait_until


def test_rotel_before_recohop(tmp_path, downstream, start_hop) -> None:
    hop = start_hop(PASSTHROUGH.format(downstream=downstream.endpoint))
    with start_rotel(hop.endpoint, tmp_path / "rotel") as rotel:
        sent = send_spans(rotel.grpc_endpoint, 200)
        wait_until(lambda: len(downstream.spans()) == len(sent), timeout=30)
    assert sorted(s.SerializeToString() for s in downstream.spans()) == sorted(sent)


def test_rotel_after_recohop(tmp_path, downstream, start_hop) -> None:
    with start_rotel(downstream.endpoint, tmp_path / "rotel") as rotel:
        hop = start_hop(PASSTHROUGH.format(downstream=rotel.grpc_endpoint))
        sent = send_spans(hop.endpoint, 200)
        wait_until(lambda: len(downstream.spans()) == len(sent), timeout=30)
    assert sorted(s.SerializeToString() for s in downstream.spans()) == sorted(sent)
