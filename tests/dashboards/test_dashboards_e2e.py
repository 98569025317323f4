"""The strong check: recommender traffic through a hop process (default pipeline, traces sampled) into a real
Prometheus; every panel target's PromQL returns data and the key ones match the simulator's ground truth.

The timeline makes the rate-based CTR panel comparable with ground truth exactly rather than within a
tolerance (see `test_ctr_panel_matches_ground_truth`):
1. a warm-up run creates every click and impression series the measured run will increment;
2. only then does Prometheus start, so every series has its first sample in the same scrape, holding the
   warm-up counts (read from the hop before Prometheus started);
3. the measured run; then wait until the hop has decided every trace, Prometheus has scraped the final
   counts and the recording rules have been evaluated on that scrape.
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
from dashboards.validate import evaluate_panels
from processor.localprom import LocalPrometheus, prometheus_binary, start_prometheus

# Panels that only have data when something goes wrong in the hop itself (refusals, early decisions, export
# retries): a healthy run leaves their counters without series, which is the right picture.
TROUBLE_ONLY = ("refused", "decided early", "retries", "failed", "folded", "late spans")
FAULTS = "error=0.03,slow=0.03,timeout=0.03,cache_miss=0.2"
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
    before: dict[SeriesKey, float]  # the hop's counters when Prometheus started (the warm-up's counts)
    after: dict[SeriesKey, float]  # ... once everything was counted
    evaluated_at: float  # a recording-rule evaluation that saw the final scrape


@pytest.fixture(scope="module")
def traffic_through_hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if prometheus_binary() is None:
        pytest.skip("Debian prometheus not installed")
    from recommender.faults import Faults
    from recommender.simulate import run as simulate

    work: Path = tmp_path_factory.mktemp("e2e")
    # A process of its own: the hop does not share the simulator's interpreter (GIL) or its timing.
    hop = start_hop_process(None, work / "hop")
    prom: LocalPrometheus | None = None
    try:
        faults = Faults.parse(FAULTS)
        warmup = simulate(hop.endpoint, rps=80, duration=5, seed=4, pace=True, faults=faults).to_dict()
        # simulate() returns once the hop acknowledged every span, and the counters are updated on receipt.
        before = hop_samples(hop)
        assert total(before, "reco_impressions_total") == warmup["impressions"], before
        build.write(work / "rules")
        prom = start_prometheus([hop.metrics_url], work / "prom", rule_files=[work / "rules" / "recording.rules.yml"])
        wait_for_scrape_of(prom, before, "the warm-up's counts")
        main_started = time.time()
        main = simulate(hop.endpoint, rps=80, duration=20, seed=5, pace=True, faults=faults).to_dict()
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
        yield Run(prom, hop, warmup, main, main_started, before, after, latest_evaluation())
    finally:
        hop.terminate()
        if prom is not None:
            prom.stop()


def test_every_panel_target_returns_data(traffic_through_hop: Run) -> None:
    run = traffic_through_hop
    window = f"{int(time.time() - run.main_started) + 30}s"
    results = evaluate_panels(run.prom.url, {}, rate_interval=window)
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


def test_ctr_panel_matches_ground_truth(traffic_through_hop: Run) -> None:
    """The dashboard's own CTR-by-placement query (recorded 5m rates) equals the measured run's CTR.

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

    (ctr_target,) = evaluate_panels(run.prom.url, {}, at=run.evaluated_at)["CTR by placement"]
    ctr = {series.labels["placement"]: series.value for series in ctr_target.series}
    truth = {p: s["clicks"] / s["impressions"] for p, s in run.main["per_placement"].items()}
    assert ctr == pytest.approx(truth, rel=1e-9)


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
