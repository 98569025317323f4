"""The whole chain end to end with real processes on loopback, as README's picture draws it: the recommender
simulator (OTel SDK, OTLP gRPC) → otelcol agent → otelcol gateway (loadbalancing exporter, routing_key traceID,
static resolver listing three recohops) → recohop ×3 (the rendered production config) → otelcol backend (file
exporter), with Prometheus scraping the three recohops.

The reference is one recohop with the same rendered config fed the same traffic directly: the simulator's ids
are seeded, so a second, captured run of the same seed is the same traces span for span.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from chain_run import (
    Chain,
    RecohopProcess,
    attribute_values,
    backend_text,
    json_counts,
    parse_traces,
    raw_attribute_values,
    render_recohop,
    span_ids_per_trace,
    spans_per_trace,
    start_chain,
)
from otelcol_fixture import otelcol_binary
from otlp_peers import CaptureServer, wait_until
from recommender_capture import capture_recommender_traffic

from processor.signals import METHOD_PATHS

pytestmark = pytest.mark.slow

FAULTS = "error=0.03,slow=0.03,timeout=0.03,cache_miss=0.2"
SPECIAL = ("error", "fallback", "cold_start", "slow")
DERIVED = ("reco_requests_total", "reco_impressions_total", "reco_clicks_total", "reco_conversions_total",
           "traces_span_metrics_calls_total")
SPANS_RECEIVED = 'recohop_received_items_total{signal="spans"}'


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a generator fixture
    binary = otelcol_binary()
    chain = start_chain(binary, tmp_path_factory.mktemp("chain"))
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a generator fixture
    """One recohop, same rendered production config, its backend a capture server: the reference."""
    sink = CaptureServer().start()
    hop = render_recohop(tmp_path_factory.mktemp("single"), "single", sink.endpoint)
    try:
        yield hop.start(), sink
    finally:
        hop.stop()
        sink.stop()


def send_all(endpoint: str, requests: list[bytes]) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(METHOD_PATHS["traces"])
        for payload in requests:
            export(payload, timeout=30)


def simulate(endpoint: str, rps: float, duration: float, seed: int, pace: bool = False) -> dict:
    from recommender.faults import Faults
    from recommender.simulate import run

    return run(endpoint, rps, duration, seed, Faults.parse(FAULTS), pace=pace).to_dict()


def drained(hops: list[RecohopProcess]) -> bool:
    """Every buffered trace decided and every kept span delivered (queue bytes count in-flight calls too)."""
    for hop in hops:
        metrics = hop.metrics()
        if metrics.get("recohop_sampling_buffer_traces{}", 1) or metrics.get("recohop_queue_bytes{}", 1):
            return False
    return True


def derived_totals(hops: list[RecohopProcess]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for hop in hops:
        for sample, value in hop.metrics().items():
            if sample.startswith(DERIVED):
                totals[sample] = totals.get(sample, 0.0) + value
    return totals


def special_ids(truth: dict) -> dict[str, set[bytes]]:
    return {kind: {bytes.fromhex(t) for t in truth["trace_ids"][kind]} for kind in SPECIAL}


def whole(kept: dict[bytes, set[bytes]], sent: dict[bytes, set[bytes]], ids: set[bytes]) -> int:
    return sum(kept.get(t, set()) == sent[t] for t in ids)


def test_chain_keeps_what_one_recohop_keeps(chain: Chain, single: tuple[RecohopProcess, CaptureServer]) -> None:
    hop, sink = single
    rps, duration, seed = 60, 10, 21
    captured, truth = capture_recommender_traffic(rps, duration, seed, FAULTS)
    sent = span_ids_per_trace(parse_traces(captured))
    total = sum(len(s) for s in sent.values())

    live = simulate(chain.agent_endpoint, rps, duration, seed)  # through agent and gateway
    assert live["trace_ids"] == truth["trace_ids"] and live["requests"] == truth["requests"]
    send_all(hop.endpoint, captured)  # the reference, straight in

    wait_until(lambda: chain.hop_sum(SPANS_RECEIVED) == total, f"the three recohops receiving all {total} spans",
               timeout=60, seen=lambda: chain.hop_sum(SPANS_RECEIVED))
    shares = [h.metrics().get(SPANS_RECEIVED, 0.0) for h in chain.recohops]
    wait_until(lambda: drained([*chain.recohops, hop]), "every recohop decided and delivered", timeout=60)
    exported = chain.hop_sum('recohop_exported_items_total{signal="spans"}')
    wait_until(lambda: sum(spans_per_trace(chain.backend_traces()).values()) == exported,
               f"the backend writing the {exported:.0f} spans the recohops delivered", timeout=30,
               seen=lambda: sum(spans_per_trace(chain.backend_traces()).values()))
    single_exported = hop.metrics()['recohop_exported_items_total{signal="spans"}']
    wait_until(lambda: len(sink.spans()) == single_exported, "the reference's kept spans at its sink")

    backend = chain.backend_traces()
    kept_chain, kept_single = span_ids_per_trace(backend), span_ids_per_trace(sink.requests("traces"))
    specials = special_ids(truth)
    figures = {
        "spans_sent": total, "traces_sent": len(sent), "spans_per_recohop": shares,
        "traces_kept_chain": len(kept_chain), "traces_kept_single": len(kept_single),
        "spans_at_backend": sum(spans_per_trace(backend).values()),
        **{f"{kind}_whole": f"{whole(kept_chain, sent, ids)}/{len(ids)}" for kind, ids in specials.items()},
    }
    print("chain:", json_counts(figures))
    assert all(share > 0 for share in shares), "the gateway spread the traces over all three instances"
    assert kept_chain == kept_single, "the chain keeps exactly the traces (and spans) one recohop keeps"
    assert spans_per_trace(backend) == spans_per_trace(sink.requests("traces")), "nothing delivered twice"
    for kind, ids in specials.items():
        assert ids and whole(kept_chain, sent, ids) == len(ids), (kind, figures)
    assert len(kept_chain) < 0.5 * len(sent), "traces really were sampled"

    # Derived metrics: the three instances' counters sum to the reference's, and to the ground truth, also as
    # Prometheus has them from scraping the three.
    assert derived_totals(chain.recohops) == derived_totals([hop])
    assert chain.prometheus is not None
    promql = {"requests": "sum(reco_requests_total)", "impressions": "sum(reco_impressions_total)",
              "clicks": "sum(reco_clicks_total)", "conversions": "sum(reco_conversions_total)"}
    for key, query in promql.items():
        wait_until(lambda q=query, k=key: chain.prometheus.scalar(q) == truth[k],  # type: ignore[union-attr]
                   f"Prometheus' {query} reaching the ground truth {truth[key]}", timeout=30,
                   seen=lambda q=query: chain.prometheus.scalar(q))  # type: ignore[union-attr]

    # No raw PII in anything the backend wrote: user ids, e-mail addresses and client IPs were in the traffic.
    raw = {key: raw_attribute_values(captured, (key,)) for key in ("user.id", "user.email", "client.address")}
    assert all(raw.values()), "the traffic carried the PII this checks for"
    text = backend_text(chain.backend_dir)
    assert not any(email in text for email in raw["user.email"])
    for key, values in raw.items():
        assert not attribute_values(backend, key) & values, key


def test_a_recohop_killed_mid_run_loses_no_buffered_trace(chain: Chain,
                                                          single: tuple[RecohopProcess, CaptureServer]) -> None:
    """SIGKILL one instance while traffic flows, restart it on the same config: the gateway's queue retries what
    the dead instance refused, and the write-ahead log brings back what it had buffered."""
    hop, sink = single
    rps, duration, seed = 40, 12, 22
    captured, truth = capture_recommender_traffic(rps, duration, seed, FAULTS)
    sent = span_ids_per_trace(parse_traces(captured))
    send_all(hop.endpoint, captured)  # the reference
    victim = chain.recohops[1]
    before = victim.metrics().get(SPANS_RECEIVED, 0.0)

    traffic = threading.Thread(target=simulate, args=(chain.agent_endpoint, rps, duration, seed, True),
                               name="paced-simulator")
    traffic.start()
    try:
        wait_until(lambda: victim.metrics().get(SPANS_RECEIVED, 0.0) > before + 300,
                   "the victim holding a few hundred spans of the running traffic", timeout=60)
        at_kill = victim.metrics()
        victim.kill()
        victim.start()
    finally:
        traffic.join(120)
    replayed = victim.metrics().get("recohop_wal_replayed_spans_total{}", 0.0)

    def phase_kept() -> dict[bytes, set[bytes]]:
        return {t: s for t, s in span_ids_per_trace(chain.backend_traces()).items() if t in sent}

    reference = {t: s for t, s in span_ids_per_trace(sink.requests("traces")).items() if t in sent}
    wait_until(lambda: drained([hop]) and phase_kept() == reference,
               "the chain's kept traces of this run equal the reference's", timeout=90,
               seen=lambda: {"missing_traces": len(set(reference) - set(phase_kept())),
                             "extra_traces": len(set(phase_kept()) - set(reference)),
                             "missing_spans": sum(len(reference[t] - phase_kept().get(t, set())) for t in reference)})
    kept = phase_kept()
    specials = special_ids(truth)
    duplicates = sum(n for t, n in spans_per_trace(chain.backend_traces()).items() if t in sent) - sum(
        len(s) for s in kept.values())
    figures = {
        "victim_buffered_traces_at_kill": at_kill.get("recohop_sampling_buffer_traces{}"),
        "victim_spans_received_before_kill": at_kill.get(SPANS_RECEIVED, 0.0) - before,
        "wal_replayed_spans": replayed, "traces_kept": len(kept), "reference_kept": len(reference),
        "spans_lost": sum(len(reference[t] - kept.get(t, set())) for t in reference),
        "spans_delivered_twice": duplicates,
        **{f"{kind}_whole": f"{whole(kept, sent, ids)}/{len(ids)}" for kind, ids in specials.items()},
    }
    print("chain with one recohop killed:", json_counts(figures))
    assert replayed > 0, ("the restarted instance replayed its write-ahead log", figures)
    for kind, ids in specials.items():
        assert whole(kept, sent, ids) == len(ids), (kind, figures)


def test_chain_processes_stop_cleanly(chain: Chain, tmp_path: Path) -> None:
    """Each stage drains into the next on SIGTERM and exits 0; no process outlives the module."""
    chain.stop()
    for name, collector in chain.collectors.items():
        assert collector.proc.returncode == 0, (name, collector.log()[-2000:])
    for hop in chain.recohops:
        assert hop.proc is not None and hop.proc.returncode == 0, hop.log()[-2000:]
