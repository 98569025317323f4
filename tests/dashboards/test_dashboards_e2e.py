"""The strong check: recommender traffic through the hop (default pipeline, traces sampled) into a real
Prometheus; every panel target's PromQL returns data and the key ones match the simulator's ground truth."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from dashboards import build
from dashboards.validate import evaluate_panels
from processor.config import load_config
from processor.hop import Hop
from processor.localprom import prometheus_binary, start_prometheus

# Panels that only have data when something goes wrong in the hop itself (refusals, early decisions, export
# retries): a healthy run leaves their counters without series, which is the right picture.
TROUBLE_ONLY = ("refused", "decided early", "retries", "failed", "folded", "late spans")


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def traffic_through_hop(tmp_path_factory):
    if prometheus_binary() is None:
        pytest.skip("Debian prometheus not installed")
    from recommender.faults import Faults
    from recommender.simulate import run as simulate

    work: Path = tmp_path_factory.mktemp("e2e")
    cfg = load_config(None)
    cfg.receiver.endpoint, cfg.telemetry.metrics_endpoint = _endpoint(), _endpoint()
    cfg.exporter.file.path = work / "kept" / "export.jsonl"
    hop = Hop(cfg).start()
    build.write(work / "rules")
    prom = start_prometheus([f"127.0.0.1:{hop.metrics_port}"], work / "prom",
                            rule_files=[work / "rules" / "recording.rules.yml"])
    try:
        prom.wait_for_scrape()
        faults = Faults.parse("error=0.03,slow=0.03,timeout=0.03,cache_miss=0.2")
        # A short warm-up run first, so the derived series exist before the measured run: rate() cannot see
        # the first increment of a series born between two scrapes.
        warmup = simulate(hop.endpoint, rps=80, duration=5, seed=4, pace=True, faults=faults).to_dict()
        time.sleep(3)
        started = time.time()
        main = simulate(hop.endpoint, rps=80, duration=20, seed=5, pace=True, faults=faults).to_dict()
        time.sleep(4)  # decisions (root_grace) and a few scrapes of the final counts
        yield prom, warmup, main, hop, started
    finally:
        hop.stop()
        prom.stop()


def test_every_panel_target_returns_data(traffic_through_hop) -> None:
    prom, _warmup, _main, _hop, started = traffic_through_hop
    window = f"{int(time.time() - started) + 30}s"
    results = evaluate_panels(prom.url, {}, rate_interval=window)
    assert results
    empty = []
    for panel, targets in results.items():
        for target in targets:
            assert target.error is None, (panel, target.expr, target.error)
            if not target.series and not any(word in panel.lower() for word in TROUBLE_ONLY):
                empty.append((panel, target.expr))
    # Model-quality gauges come from the recommender's offline evaluation, which this hop does not serve.
    empty = [e for e in empty if "model" not in e[0].lower()]
    assert empty == []


def test_ctr_panel_matches_ground_truth(traffic_through_hop) -> None:
    """The dashboard's own CTR-by-placement query (recorded 5m rates, covering both runs) against ground truth.

    rate() cannot see the first increment of a series born between two scrapes, which costs the young
    derived series a second of traffic each: this takes 5 %; the totals in the next test match within 2 %."""
    prom, warmup, main, _hop, _started = traffic_through_hop
    (ctr_target,) = evaluate_panels(prom.url, {})["CTR by placement"]
    ctr = {series.labels["placement"]: series.value for series in ctr_target.series}
    assert set(ctr) == set(main["per_placement"])
    for placement in main["per_placement"]:
        runs = [t["per_placement"].get(placement, {"clicks": 0, "impressions": 0}) for t in (warmup, main)]
        truth_ctr = sum(r["clicks"] for r in runs) / sum(r["impressions"] for r in runs)
        assert ctr[placement] == pytest.approx(truth_ctr, rel=0.05), placement


def test_key_figures_match_ground_truth_although_traces_were_sampled(traffic_through_hop) -> None:
    """Totals over both runs, as Prometheus has them from the hop's derived counters."""
    prom, warmup, main, hop, _started = traffic_through_hop
    kept = sum(v.value for f in hop.registry.collect() for v in f.samples
               if v.name == "recohop_sampling_decisions_total" and v.labels.get("decision") == "keep")
    decided = sum(v.value for f in hop.registry.collect() for v in f.samples
                  if v.name == "recohop_sampling_decisions_total")
    assert 0 < kept < 0.5 * decided  # traces really were sampled
    ctr = {r["metric"]["placement"]: float(r["value"][1]) for r in prom.query(
        "sum by (placement) (reco_clicks_total) / sum by (placement) (reco_impressions_total)")}
    for placement in main["per_placement"]:
        runs = [t["per_placement"].get(placement, {"clicks": 0, "impressions": 0}) for t in (warmup, main)]
        truth_ctr = sum(r["clicks"] for r in runs) / sum(r["impressions"] for r in runs)
        assert ctr[placement] == pytest.approx(truth_ctr, rel=0.02), placement
    requests = warmup["requests"] + main["requests"]
    rates = {
        "error": 'sum(reco_requests_total{status_code="STATUS_CODE_ERROR"}) / sum(reco_requests_total)',
        "cold_start": 'sum(reco_requests_total{cold_start="true"}) / sum(reco_requests_total)',
    }
    for key, promql in rates.items():
        truth_rate = (warmup["counts"][key] + main["counts"][key]) / requests
        value = float(prom.query(promql)[0]["value"][1])
        assert value == pytest.approx(truth_rate, rel=0.02), key
