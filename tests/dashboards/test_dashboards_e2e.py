"""The strong check: recommender traffic through the hop (default pipeline, traces sampled) into a real
Prometheus; every panel target's PromQL returns data and the key ones match the simulator's ground truth."""

from __future__ import annotations

import socket
import threading
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
    started = time.time()
    try:
        prom.wait_for_scrape()
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("truth", simulate(
            hop.endpoint, rps=80, duration=20, seed=5, pace=True,
            faults=Faults.parse("error=0.03,slow=0.03,timeout=0.03,cache_miss=0.2"))))
        thread.start()
        thread.join(120)
        time.sleep(4)  # decisions (root_grace) and a few scrapes of the final counts
        yield prom, box["truth"].to_dict(), hop, started
    finally:
        hop.stop()
        prom.stop()


def test_every_panel_target_returns_data(traffic_through_hop) -> None:
    prom, _truth, _hop, started = traffic_through_hop
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
    """The dashboard's own CTR-by-placement query, over a window covering the run, against ground truth.

    rate() cannot see the first increment of a series born between scrapes (about one scrape interval of
    each of the ~30 click/impression series in a 20 s run), so this takes 5 %; the totals above match within 2 %."""
    prom, truth, _hop, started = traffic_through_hop
    window = f"{int(time.time() - started) + 30}s"
    (ctr_target,) = evaluate_panels(prom.url, {}, rate_interval=window)["CTR by placement"]
    ctr = {series.labels["placement"]: series.value for series in ctr_target.series}
    assert set(ctr) == set(truth["per_placement"])
    for placement, gt in truth["per_placement"].items():
        assert ctr[placement] == pytest.approx(gt["ctr"], rel=0.05), placement


def test_key_figures_match_ground_truth_although_traces_were_sampled(traffic_through_hop) -> None:
    prom, truth, hop, _started = traffic_through_hop
    kept = sum(v.value for f in hop.registry.collect() for v in f.samples
               if v.name == "recohop_sampling_decisions_total" and v.labels.get("decision") == "keep")
    decided = sum(v.value for f in hop.registry.collect() for v in f.samples
                  if v.name == "recohop_sampling_decisions_total")
    assert 0 < kept < 0.5 * decided  # traces really were sampled
    ctr = {r["metric"]["placement"]: float(r["value"][1]) for r in prom.query(
        "sum by (placement) (reco_clicks_total) / sum by (placement) (reco_impressions_total)")}
    for placement, gt in truth["per_placement"].items():
        assert ctr[placement] == pytest.approx(gt["ctr"], rel=0.02), placement
    rates = {
        "error_rate": 'sum(reco_requests_total{status_code="STATUS_CODE_ERROR"}) / sum(reco_requests_total)',
        "cold_start_rate": 'sum(reco_requests_total{cold_start="true"}) / sum(reco_requests_total)',
    }
    for key, promql in rates.items():
        value = float(prom.query(promql)[0]["value"][1])
        assert value == pytest.approx(truth[key], rel=0.02), key
