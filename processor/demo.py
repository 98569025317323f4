"""The one-command demo: recommender traffic with faults through a hop running the built-in default pipeline,
a real Prometheus scraping it (when installed), dashboards built and previewed, and a report comparing what
the hop derived and kept with the simulator's ground truth."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from processor import otlpjson
from processor.config import load_config
from processor.hop import Hop
from processor.localprom import LocalPrometheus, prometheus_binary, start_prometheus

DEMO_FAULTS = "error=0.02,slow=0.03,timeout=0.03,cache_miss=0.2,drift=email,drift_start=0.5"


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@dataclass
class DemoResult:
    out_dir: Path
    report_path: Path
    report: str
    figures: dict = field(default_factory=dict)


def samples(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named `name` in a registry."""
    return [(dict(s.labels), s.value) for family in registry.collect() for s in family.samples if s.name == name]


def total(registry: CollectorRegistry, name: str, **match: str) -> float:
    return sum(v for labels, v in samples(registry, name) if all(labels.get(k) == m for k, m in match.items()))


def kept_trace_ids(sink_dir: Path) -> set[str]:
    """Hex trace ids of every span in the file sink's OTLP/JSON lines."""
    ids: set[str] = set()
    for path in sorted(sink_dir.glob("export.jsonl*")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for rs in json.loads(line).get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    ids.update(otlpjson.id_hex(span["traceId"]) for span in ss.get("spans", []))
    return ids


def run_demo(out_dir: Path, duration: float, rps: float, seed: int, faults: str,
             progress=print) -> DemoResult:  # noqa: ANN001 - a print-like callable
    from dashboards.build import write as build_dashboards
    from recommender.faults import Faults
    from recommender.quality import ModelQualityMetrics, offline_evaluation
    from recommender.simulate import run as simulate
    from recommender.simulate import world_and_arms

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None)
    cfg.receiver.endpoint = _free_endpoint()
    cfg.telemetry.metrics_endpoint = _free_endpoint()
    cfg.exporter.endpoint = None
    cfg.exporter.file.path = out_dir / "kept" / "export.jsonl"
    cfg.exporter.file.max_bytes = 1 << 30
    for old in (out_dir / "kept").glob("export.jsonl*"):
        old.unlink()

    progress("training the recommender's two model versions and evaluating them offline ...")
    world_and_arms(seed)  # the serving models (cached): trained before the traffic the preview shows starts
    summary = offline_evaluation(seed)
    (out_dir / "model-eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    # The recommendation service's own /metrics: it publishes each model version it loads with its quality.
    quality = ModelQualityMetrics()
    quality_target = f"127.0.0.1:{quality.serve('127.0.0.1:0')}"

    hop = Hop(cfg).start()
    progress(f"recohop (built-in default pipeline: {', '.join(s.name for s in hop.pipeline.stages)}) on "
             f"{hop.endpoint}, /metrics on 127.0.0.1:{hop.metrics_port}")
    prom: LocalPrometheus | None = None
    dashboards_dir = out_dir / "dashboards"
    build_dashboards(dashboards_dir)
    if prometheus_binary():
        prom = start_prometheus([f"127.0.0.1:{hop.metrics_port}", quality_target], out_dir / "prometheus",
                                rule_files=[dashboards_dir / "recording.rules.yml",
                                            dashboards_dir / "alerts.rules.yml"])
        progress(f"Prometheus on {prom.url} scraping the hop every second")
    else:
        progress("Prometheus is not installed: skipping the live queries and the preview image")

    truth_box: dict = {}

    def drive() -> None:
        truth_box["truth"] = simulate(hop.endpoint, rps=rps, duration=duration, seed=seed,
                                      faults=Faults.parse(faults), pace=True,
                                      ground_truth=str(out_dir / "ground-truth.json"), quality=quality)

    driver = threading.Thread(target=drive, name="simulator", daemon=True)
    started = time.monotonic()
    started_at = time.time()  # the preview shows the run from here on
    progress(f"simulating {duration:.0f}s of recommendation traffic at {rps:.0f} req/s with faults {faults}")
    try:
        driver.start()
        while driver.is_alive():
            driver.join(5)
            reg = hop.registry
            progress(f"  {time.monotonic() - started:5.0f}s  spans in {total(reg, 'recohop_received_items_total', signal='spans'):>8.0f}"
                     f"  spans out {total(reg, 'recohop_exported_items_total', signal='spans'):>7.0f}"
                     f"  traces buffered {total(reg, 'recohop_sampling_buffer_traces'):>5.0f}")
        # The last traces reach their decision (root_grace) and go out; then Prometheus scrapes the final counts.
        _wait_until_decided(hop, progress)
        if prom is not None:
            _wait_until_scraped(prom, hop.registry, progress)
            figures_prom = _prometheus_figures(prom)
            from dashboards.preview import render as render_preview

            preview_path = out_dir / "recommender-overview.png"
            render_preview(prom.url, preview_path, **preview_window(started_at, time.time(), duration))
        else:
            figures_prom, preview_path = {}, None
        registry = hop.registry
    finally:
        hop.stop()
        if prom is not None:
            prom.stop()
        quality.close()
    truth = truth_box["truth"].to_dict()
    return _report(out_dir, registry, truth, figures_prom, dashboards_dir, preview_path)


def preview_window(started_at: float, end: float, duration: float, scrape_interval: float = 1.0) -> dict:
    """The preview's range and rate window for a short run: from the run's start to `end` (nothing before
    it to show), rates over a quarter of the run (Prometheus here scrapes every second), so constant traffic
    reads as a flat line after the first window instead of climbing through a 5-minute window."""
    from dashboards.preview import short_run_rate_window

    return {"window": f"{max(int(end - started_at) + 1, 10)}s", "end": end, "scrape_interval": scrape_interval,
            "rate_interval": short_run_rate_window(duration, scrape_interval)}


def _poll(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _wait_until_decided(hop: Hop, progress: Callable[[str], None], timeout: float = 30.0) -> None:
    """Until no trace waits for a decision and the export queue is empty (the report reads final counts)."""
    reg = hop.registry
    if not _poll(lambda: total(reg, "recohop_sampling_buffer_traces") == 0 and hop.exporter.queued_bytes() == 0,
                 timeout):
        progress(f"  after {timeout:.0f}s still {total(reg, 'recohop_sampling_buffer_traces'):.0f} traces waiting "
                 f"and {hop.exporter.queued_bytes()} bytes queued: the report shows what was decided so far")


# Counters that no longer change once everything is decided (metric points go out on a timer: not these).
FINAL_COUNTERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("recohop_received_items_total", {"signal": "spans"}), ("recohop_exported_items_total", {"signal": "spans"}),
    ("reco_requests_total", {}), ("reco_impressions_total", {}), ("reco_clicks_total", {}))


def _wait_until_scraped(prom: LocalPrometheus, reg: CollectorRegistry, progress: Callable[[str], None],
                        timeout: float = 30.0) -> None:
    """Until Prometheus' latest scrape holds the hop's final counts."""
    def scraped() -> bool:
        for name, match in FINAL_COUNTERS:
            selector = ",".join(f'{k}="{v}"' for k, v in match.items())
            if prom.scalar(f"sum({name}{{{selector}}})") != total(reg, name, **match):
                return False
        return True

    if not _poll(scraped, timeout):
        progress(f"  Prometheus had not scraped the final counts after {timeout:.0f}s: its figures may lag")


def _prometheus_figures(prom: LocalPrometheus) -> dict:
    """CTR per placement and key rates as Prometheus computes them from the scraped hop metrics."""
    ctr = prom.query("sum by (placement) (reco_clicks_total) / sum by (placement) (reco_impressions_total)")
    rates = {
        "error_rate": 'sum(reco_requests_total{status_code="STATUS_CODE_ERROR"}) / sum(reco_requests_total)',
        "cold_start_rate": 'sum(reco_requests_total{cold_start="true"}) / sum(reco_requests_total)',
        "fallback_rate": 'sum(reco_requests_total{fallback="true"}) / sum(reco_requests_total)',
    }
    out = {"ctr_by_placement": {r["metric"].get("placement", "?"): float(r["value"][1]) for r in ctr}}
    for key, promql in rates.items():
        result = prom.query(promql)
        out[key] = float(result[0]["value"][1]) if result else None
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def _report(out_dir: Path, reg: CollectorRegistry, truth: dict, prom: dict, dashboards_dir: Path,
            preview: Path | None) -> DemoResult:
    lines = ["# recohop demo report", ""]
    spans_in = total(reg, "recohop_received_items_total", signal="spans")
    spans_out = total(reg, "recohop_exported_items_total", signal="spans")
    lines += ["## Traffic", f"- requests simulated: {truth['requests']} ({truth['spans']} spans in ground truth)",
              f"- spans in: {spans_in:.0f}, spans out (kept): {spans_out:.0f} "
              f"({spans_out / max(spans_in, 1):.1%} of spans)",
              f"- metric points out: {total(reg, 'recohop_exported_items_total', signal='metric_points'):.0f}", ""]

    kept = kept_trace_ids(out_dir / "kept")
    lines += ["## Traces kept per policy", "| policy | traces kept |", "|---|---|"]
    for labels, value in sorted(samples(reg, "recohop_sampling_decisions_total"), key=lambda x: x[0]["policy"]):
        if labels.get("decision") == "keep":
            lines.append(f"| {labels['policy']} | {value:.0f} |")
    dropped = total(reg, "recohop_sampling_decisions_total", decision="drop")
    lines += [f"| (dropped) | {dropped:.0f} |", "", "Special traces of the ground truth found in the kept output:",
              "| kind | in ground truth | kept | missing |", "|---|---|---|---|"]
    special_missing = 0
    for kind, ids in truth["trace_ids"].items():
        found = sum(1 for t in ids if t in kept)
        special_missing += len(ids) - found
        lines.append(f"| {kind} | {len(ids)} | {found} | {len(ids) - found} |")
    lines.append("")

    lines += ["## Redactions per rule", "| rule | values redacted |", "|---|---|"]
    for labels, value in sorted(samples(reg, "recohop_redaction_rule_hits_total"), key=lambda x: -x[1]):
        lines.append(f"| {labels.get('rule', '?')} | {value:.0f} |")
    for labels, value in sorted(samples(reg, "recohop_redaction_detector_hits_total"), key=lambda x: -x[1]):
        lines.append(f"| detector {labels.get('detector', '?')} | {value:.0f} |")
    lines.append("")

    lines += ["## Series per derived metric (after cardinality control)", "| metric | active series | folded |",
              "|---|---|---|"]
    # The derived metrics are limited twice (as Prometheus series on /metrics and as OTLP points going out,
    # named without `_total`): show each metric once.
    series: dict[str, float] = {}
    folded: dict[str, float] = {}
    for labels, value in samples(reg, "recohop_cardinality_active_series"):
        name = labels["metric"].removesuffix("_total")
        series[name] = max(series.get(name, 0.0), value)
    for labels, value in samples(reg, "recohop_cardinality_folded_total"):
        name = labels["metric"].removesuffix("_total")
        folded[name] = max(folded.get(name, 0.0), value)
    for name in sorted(series):
        lines.append(f"| {name} | {series[name]:.0f} | {folded.get(name, 0):.0f} |")
    lines.append("")

    lines += ["## CTR per placement: derived metrics vs ground truth",
              "| placement | ground truth | hop metrics | Prometheus | difference |", "|---|---|---|---|---|"]
    worst = 0.0
    figures: dict = {"ctr": {}}
    for placement, gt in truth["per_placement"].items():
        clicks = total(reg, "reco_clicks_total", placement=placement)
        impressions = total(reg, "reco_impressions_total", placement=placement)
        hop_ctr = clicks / impressions if impressions else 0.0
        prom_ctr = prom.get("ctr_by_placement", {}).get(placement)
        diff = abs(hop_ctr - gt["ctr"]) / gt["ctr"] if gt["ctr"] else 0.0
        worst = max(worst, diff)
        figures["ctr"][placement] = {"truth": gt["ctr"], "hop": hop_ctr, "prometheus": prom_ctr}
        lines.append(f"| {placement} | {_pct(gt['ctr'])} | {_pct(hop_ctr)} | {_pct(prom_ctr)} | {diff:.2%} |")
    lines.append("")
    lines += ["## Rates: derived metrics vs ground truth", "| rate | ground truth | Prometheus |", "|---|---|---|"]
    for key in ("error_rate", "cold_start_rate", "fallback_rate"):
        lines.append(f"| {key} | {_pct(truth[key])} | {_pct(prom.get(key))} |")
    lines.append("")
    lines += ["## Files", f"- Grafana JSON and rule files: {dashboards_dir}",
              f"- dashboard preview: {preview if preview else '(Prometheus not installed: no preview)'}",
              f"- kept traces (OTLP JSON lines): {out_dir / 'kept'}",
              f"- ground truth: {out_dir / 'ground-truth.json'}", ""]
    report = "\n".join(lines)
    report_path = out_dir / "report.md"
    report_path.write_text(report)
    figures.update({"spans_in": spans_in, "spans_out": spans_out, "special_missing": special_missing,
                    "worst_ctr_difference": worst, "prometheus": prom})
    (out_dir / "report.json").write_text(json.dumps(figures, indent=2) + "\n")
    return DemoResult(out_dir, report_path, report, figures)
