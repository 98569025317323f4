"""The strong check: recommender traffic through a hop process (default pipeline, traces sampled) into a real
Prometheus that scrapes the hop and the recommendation service's own /metrics; every panel target of every
dashboard returns data on this healthy run (the hop's trouble counters exist at 0, the service publishes the
quality of the models it loaded) and the key ones match the simulator's ground truth.

The timeline makes the rate-based CTR panel comparable with ground truth exactly rather than within a
tolerance (see `test_ctr_panel_matches_ground_truth`):
1. a warm-up run creates every click and impression series the measured run will increment;
2. only then does Prometheus start, so every series has its first sample in the same scrape, holding the
   warm-up counts (read from the hop before Prometheus started);
3. the measured run, at constant offered load (evenly spaced requests, so the request-rate panel must draw
   a flat line); then wait until the hop has decided every trace, Prometheus has scraped the final counts
   and the recording rules have been evaluated on that scrape.
Every wait is on a condition (counts, timestamps), never a fixed sleep.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from otlp_peers import HopProcess, start_hop_process, wait_until
from prometheus_client.parser import text_string_to_metric_families

from dashboards import build
from dashboards import recording as r
from dashboards.preview import short_run_rate_window
from dashboards.promapi import query_range
from dashboards.validate import dashboard_variables, evaluate_panels, panel_targets, substitute
from processor.localprom import LocalPrometheus, prometheus_binary, start_prometheus

FAULTS = "error=0.03,slow=0.03,timeout=0.03,cache_miss=0.2"
# The flat-line check needs requests to reach the hop at a steady rate: no other test may share the cores.
pytestmark = pytest.mark.serial

RPS = 80.0
MAIN_SEED = 5
MAIN_SECONDS = 40.0
SCRAPE_SECONDS = 1.0  # start_prometheus' scrape interval
# The hop's trouble panels: on a healthy run they answer, with 0 (their counters exist from start).
TROUBLE_PANELS = ("Items refused or failed", "Export retries", "Decided early by reason", "Decided early share")
MODEL_PANELS = {"Model NDCG@10": "ndcg@10", "Model catalogue coverage": "coverage", "Model diversity": "diversity"}
COUNTERS = ("reco_clicks_total", "reco_impressions_total")
SeriesKey = tuple[str, frozenset[tuple[str, str]]]  # (metric name, labels)


def hop_samples(hop: HopProcess, names: tuple[str, ...] = COUNTERS) -> dict[SeriesKey, float]:
    """The hop's own current values of the given counters, read from its /metrics."""
    assert hop.metrics_url is not None
    with urllib.request.urlopen(hop.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name in names}


def prom_samples(prom: LocalPrometheus, at: float, names: tuple[str, ...] = COUNTERS
                 ) -> dict[SeriesKey, list[tuple[float, float]]]:
    """Every raw sample Prometheus holds of the given counters in the 5 m before `at`: (timestamp, value)."""
    out = {}
    for name in names:
        for series in prom.query(f"{name}[5m]", at=at):
            labels = frozenset((k, v) for k, v in series["metric"].items() if k not in ("__name__", "instance", "job"))
            out[(name, labels)] = [(float(t), float(v)) for t, v in series["values"]]
    return out


def total(samples: dict[SeriesKey, float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def prom_total(prom: LocalPrometheus, name: str) -> float:
    return prom.scalar(f"sum({name})") or 0.0


def wait_for_scrape_of(prom: LocalPrometheus, values: dict[SeriesKey, float], what: str) -> float:
    """Until Prometheus holds `values` for both counters; returns the (unix) time it was seen to hold them:
    a rule evaluation scheduled later than that ran on them."""
    wanted = {name: total(values, name) for name in COUNTERS}
    wait_until(lambda: all(prom_total(prom, n) == wanted[n] for n in COUNTERS),
               f"Prometheus to scrape {what} {wanted}", timeout=30,
               seen=lambda: {n: prom_total(prom, n) for n in COUNTERS})
    return time.time()


@dataclass
class Run:
    prom: LocalPrometheus
    hop: HopProcess
    warmup: dict  # ground truth of each simulator run
    main: dict
    main_started: float  # unix time
    main_ended: float  # unix time simulate() returned: every request of the measured run was sent
    models: dict[str, float]  # model version → when its serving weights were trained (unix time)
    before: dict[SeriesKey, float]  # the hop's counters when Prometheus started (the warm-up's counts)
    after: dict[SeriesKey, float]  # ... once everything was counted
    evaluated_at: float  # a recording-rule evaluation that saw the final scrape


@pytest.fixture(scope="module")
def traffic_through_hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if prometheus_binary() is None:
        pytest.skip("Debian prometheus not installed")
    from recommender.faults import Faults
    from recommender.quality import ModelQualityMetrics, offline_evaluation
    from recommender.simulate import run as simulate
    from recommender.simulate import world_and_arms

    work: Path = tmp_path_factory.mktemp("e2e")
    # A process of its own: the hop does not share the simulator's interpreter (GIL) or its timing.
    hop = start_hop_process(None, work / "hop")
    # The recommendation service's /metrics: the measured run's service publishes the models it loads there.
    quality = ModelQualityMetrics()
    service_target = f"127.0.0.1:{quality.serve('127.0.0.1:0')}"
    prom: LocalPrometheus | None = None
    try:
        faults = Faults.parse(FAULTS)
        warmup = simulate(hop.endpoint, rps=80, duration=5, seed=4, pace=True, faults=faults).to_dict()
        # simulate() returns once the hop acknowledged every span, and the counters are updated on receipt.
        before = hop_samples(hop)
        assert total(before, "reco_impressions_total") == warmup["impressions"], before
        build.write(work / "rules")
        prom = start_prometheus([hop.metrics_url, service_target], work / "prom",
                                rule_files=[work / "rules" / "recording.rules.yml"])
        wait_for_scrape_of(prom, before, "the warm-up's counts")
        # Training and offline evaluation (cached) before the clock starts: the traffic starts at main_started.
        _, arms = world_and_arms(MAIN_SEED)
        offline_evaluation(MAIN_SEED)
        main_started = time.time()
        main = simulate(hop.endpoint, rps=RPS, duration=MAIN_SECONDS, seed=MAIN_SEED, pace=True, faults=faults,
                        quality=quality, arrivals="even").to_dict()
        main_ended = time.time()
        after = hop_samples(hop)
        assert hop_samples(hop, ("recohop_sampling_buffer_traces",)), "no sampling buffer gauge"
        wait_until(lambda: sum(hop_samples(hop, ("recohop_sampling_buffer_traces",)).values()) == 0,
                   "every trace decided (root_grace)", timeout=30,
                   seen=lambda: hop_samples(hop, ("recohop_sampling_buffer_traces",)))
        final_seen = wait_for_scrape_of(prom, after, "the final counts")

        def latest_evaluation() -> float:  # the newest evaluation both recorded rates already hold
            stamps = [float(s["value"][1]) for rule in (r.CLICKS_RATE, r.IMPRESSIONS_RATE)
                      for s in prom.query(f"timestamp({rule})")]
            return min(stamps) if stamps else 0.0

        wait_until(lambda: latest_evaluation() > final_seen, "a rule evaluation on the final counts",
                   timeout=30, seen=lambda: {"final_seen": final_seen, "evaluated": latest_evaluation()})
        # The service's model gauges were scraped too (they appeared when the measured run loaded its models).
        prom.wait_for('count(reco_model_ndcg{k="10"})', lambda result: bool(result) and
                      float(result[0]["value"][1]) == len(main_models(arms)), what="the served models' NDCG")
        yield Run(prom, hop, warmup, main, main_started, main_ended,
                  {m.version: m.trained_at for m in arms.values()}, before, after, latest_evaluation())
    finally:
        hop.terminate()
        if prom is not None:
            prom.stop()
        quality.close()


def main_models(arms: dict) -> set[str]:
    """Versions the measured run's service loads: both A/B arms and the popularity fallback."""
    return {m.version for m in arms.values()} | {"popularity"}


def test_every_panel_target_of_every_dashboard_returns_data(traffic_through_hop: Run) -> None:
    """No exclusion list: a healthy hop's trouble panels answer 0, the model panels answer from the service."""
    run = traffic_through_hop
    window = f"{int(time.time() - run.main_started) + 30}s"
    results = evaluate_panels(run.prom.url, {}, rate_interval=window)
    expected = {(t.panel, t.ref_id) for t in panel_targets()}
    assert {(panel, t.ref_id) for panel, targets in results.items() for t in targets} == expected
    errors = {(panel, t.expr): t.error for panel, targets in results.items() for t in targets if t.error}
    assert errors == {}
    empty = [(panel, t.expr) for panel, targets in results.items() for t in targets if not t.series]
    assert empty == [], f"{len(empty)} of {len(expected)} panel targets without data"
    for panel in TROUBLE_PANELS:  # present, and 0: nothing went wrong in the hop
        values = [s.value for t in results[panel] for s in t.series]
        assert values and all(v == 0 for v in values), (panel, values)


def test_model_quality_panels_show_what_the_service_loaded(traffic_through_hop: Run) -> None:
    """The NDCG/coverage/diversity gauges equal the offline evaluation of exactly the versions the service
    serves, and the age panel is the time since their weights were trained."""
    from recommender.quality import offline_evaluation

    run = traffic_through_hop
    evaluation = offline_evaluation(MAIN_SEED)["models"]
    at = time.time()
    results = evaluate_panels(run.prom.url, {}, at=at)
    for panel, key in MODEL_PANELS.items():
        shown = {s.labels["model_version"]: s.value for t in results[panel] for s in t.series}
        assert set(shown) == set(run.models) | {"popularity"}, panel
        assert shown == pytest.approx({v: evaluation[v][key] for v in shown}, rel=1e-5), panel
    ages = {s.labels["model_version"]: s.value for t in results["Model age since training"] for s in t.series}
    for version, trained_at in run.models.items():
        assert ages[version] == pytest.approx(at - trained_at, abs=2.0), version


def test_constant_load_draws_a_flat_request_rate_line(traffic_through_hop: Run) -> None:
    """Evenly spaced requests at RPS: the dashboard's own request-rate query, over the window a one-minute
    preview would use for this run, stays within 10 % of RPS from one window after the start to the end.
    (A 5m window over this 40 s history climbs through the whole run, to under a seventh of RPS.)"""
    run = traffic_through_hop
    window = short_run_rate_window(MAIN_SECONDS, SCRAPE_SECONDS)
    (target,) = [t for t in panel_targets() if t.panel == "Request rate by placement"]
    known = dashboard_variables()
    expr = f"sum({substitute(target.expr, {}, known, window)})"  # the panel's lines stacked: all traffic
    start = run.main_started + float(window.removesuffix("s")) + 2 * SCRAPE_SECONDS  # a full window scraped
    end = run.main_ended - SCRAPE_SECONDS
    assert end - start >= 10, (start, end)
    (line,) = query_range(run.prom.url, expr, start, end, SCRAPE_SECONDS)
    assert len(line.points) >= 10, line.points
    off = [(round(t - run.main_started, 1), round(v, 1)) for t, v in line.points if abs(v - RPS) > 0.1 * RPS]
    assert off == [], f"request rate over {window} windows strays > 10 % from {RPS}/s: {off}"
    # The same query over a 5m window, as the dashboard had it before, is no flat line at all here.
    (climbing,) = query_range(run.prom.url, f"sum({substitute(target.expr, {}, known, '5m')})", start, end,
                              SCRAPE_SECONDS)
    assert climbing.points[-1][1] > 1.3 * climbing.points[0][1]


def test_ctr_panel_matches_ground_truth(traffic_through_hop: Run) -> None:
    """The dashboard's own CTR-by-placement query, over a 5m window (the whole measured run, as the recorded
    rates the alert uses), equals the measured run's CTR.

    Why exactly: for each series, rate() takes last − first sample in the window and scales it by a factor
    that depends only on the sample timestamps and, for counters, on first value / increase (its zero-point
    extrapolation). Here every click and impression series has its first sample in Prometheus' first scrape
    (which held the warm-up's counts), so last − first is exactly the measured run's increments; all series
    share their timestamps; and every first value is large enough against its increase that the zero point
    lies beyond the extrapolation threshold. So the factor is the same for every series and cancels in
    clicks / impressions: what remains is float rounding (rel 1e-9). The preconditions are asserted first."""
    run = traffic_through_hop
    samples = prom_samples(run.prom, run.evaluated_at)
    assert set(samples) == set(run.before) == set(run.after), "a series was born after Prometheus started"
    timestamps = {tuple(t for t, _ in points) for points in samples.values()}
    assert len(timestamps) == 1, "the counters do not share their scrapes"
    (stamps,) = timestamps
    assert run.evaluated_at - 300 < stamps[0], "the run outlasted the 5m window"
    threshold = 1.1 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # rate()'s extrapolation threshold
    for key, points in samples.items():
        first, last = points[0][1], points[-1][1]
        assert (first, last) == (run.before[key], run.after[key]), key
        increase = last - first
        if increase > 0:
            duration_to_zero = (stamps[-1] - stamps[0]) * first / increase
            assert duration_to_zero >= threshold, (key, first, increase, "warm-up too short for this series")

    (ctr_target,) = evaluate_panels(run.prom.url, {}, at=run.evaluated_at, rate_interval="5m")["CTR by placement"]
    ctr = {series.labels["placement"]: series.value for series in ctr_target.series}
    truth = {p: s["clicks"] / s["impressions"] for p, s in run.main["per_placement"].items()}
    assert ctr == pytest.approx(truth, rel=1e-9)
    # The recorded CTR the low-CTR alert evaluates, from the same rule evaluation: the same figures.
    recorded = {s["metric"]["placement"]: float(s["value"][1]) for s in run.prom.query(r.PLACEMENT_CTR,
                                                                                      at=run.evaluated_at)}
    assert recorded == pytest.approx(truth, rel=1e-9)


def test_key_figures_match_ground_truth_although_traces_were_sampled(traffic_through_hop: Run) -> None:
    """Counters over both runs, as Prometheus has them from the hop's final scrape: exact, since the hop
    derives them from every span before sampling and nothing depends on when Prometheus scraped."""
    run = traffic_through_hop
    decisions = hop_samples(run.hop, ("recohop_sampling_decisions_total",))
    kept = sum(v for (_, labels), v in decisions.items() if ("decision", "keep") in labels)
    assert 0 < kept < 0.5 * sum(decisions.values())  # traces really were sampled
    at = run.evaluated_at
    ctr = {s["metric"]["placement"]: float(s["value"][1]) for s in run.prom.query(
        "sum by (placement) (reco_clicks_total) / sum by (placement) (reco_impressions_total)", at=at)}
    both = (run.warmup, run.main)
    truth = {p: sum(t["per_placement"][p]["clicks"] for t in both) / sum(t["per_placement"][p]["impressions"]
                                                                         for t in both)
             for p in run.main["per_placement"]}
    assert ctr == pytest.approx(truth, rel=1e-9)
    requests = sum(t["requests"] for t in both)
    rates = {
        "error": 'sum(reco_requests_total{status_code="STATUS_CODE_ERROR"}) / sum(reco_requests_total)',
        "cold_start": 'sum(reco_requests_total{cold_start="true"}) / sum(reco_requests_total)',
    }
    for key, promql in rates.items():
        truth_rate = sum(t["counts"][key] for t in both) / requests
        assert float(run.prom.query(promql, at=at)[0]["value"][1]) == pytest.approx(truth_rate, rel=1e-9), key

