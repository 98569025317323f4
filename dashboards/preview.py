"""Render the overview dashboard's panels from Prometheus query results into one PNG (Grafana is not needed).

The picture follows the dashboard's own grid (gridPos), legends (legendFormat), units and threshold lines,
so it shows what the Grafana dashboard would show for the same time range.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or in containers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from dashboards import build  # noqa: E402
from dashboards.promapi import PrometheusError, Series, query, query_range  # noqa: E402
from dashboards.validate import VariableValue, dashboard_variables, substitute  # noqa: E402

OVERVIEW = "recommender-overview.json"
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration like 30m or 2h expected, got {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _legend(fmt: str, labels: Mapping[str, str]) -> str:
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt) or ",".join(f"{k}={v}" for k, v in labels.items())


def _axis_units(ax: plt.Axes, unit: str) -> None:
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif unit == "s":
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 1000:.0f} ms"))
    elif unit:
        ax.set_ylabel(unit, fontsize=7)


def _thresholds(panel: dict) -> list[float]:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    return [s["value"] for s in steps if s.get("value") is not None]


def _draw_timeseries(ax: plt.Axes, panel: dict, results: list[tuple[str, list[Series]]]) -> None:
    start = min((s.points[0][0] for _, ss in results for s in ss if s.points), default=0.0)
    lines = [([(t - start) / 60 for t, _ in s.points], [v for _, v in s.points], _legend(fmt, s.labels))
             for fmt, ss in results for s in ss if s.points]
    stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
    if stacked and lines and all(len(x) == len(lines[0][0]) for x, _, _ in lines):
        ax.stackplot(lines[0][0], *[y for _, y, _ in lines], labels=[n for _, _, n in lines], alpha=0.7)
    else:
        for x, y, name in lines:
            ax.plot(x, y, label=name, linewidth=1)
    if panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off":
        for value in _thresholds(panel):
            ax.axhline(value, color="red", linestyle="--", linewidth=0.8)
    ax.set_xlabel("minutes", fontsize=7)
    if lines:
        ax.legend(fontsize=6, loc="upper left", ncol=2)


def _draw_gauge(ax: plt.Axes, panel: dict, results: list[tuple[str, list[Series]]]) -> None:
    bars = [(_legend(fmt, s.labels), s.value) for fmt, ss in results for s in ss]
    ax.barh([n for n, _ in bars], [v for _, v in bars], color="tab:green")
    ax.set_xlim(0, panel["fieldConfig"]["defaults"].get("max") or 1)
    for i, (_, v) in enumerate(bars):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)


def render(prom_url: str, out: Path, variables: Mapping[str, VariableValue] | None = None,
           window: str = "30m", end: float | None = None) -> int:
    """Write the PNG; returns how many panels had data (0 means the picture is all "No data")."""
    model = build.dashboards()[OVERVIEW]
    known = dashboard_variables({OVERVIEW: model})
    end = time.time() if end is None else end
    span = parse_duration(window)
    step = max(span / 120, 1.0)
    rate_interval = f"{max(int(step * 4), 60)}s"
    panels = [p for p in model["panels"] if p["type"] != "row"]
    rows = [p for p in model["panels"] if p["type"] == "row"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in model["panels"])
    fig = plt.figure(figsize=(18, height * 0.32))
    grid = fig.add_gridspec(height, 24, hspace=1.2, wspace=1.5, top=0.98, bottom=0.02, left=0.04, right=0.98)
    with_data = 0
    for row in rows:
        ax = fig.add_subplot(grid[row["gridPos"]["y"], :])
        ax.axis("off")
        ax.text(0, 0, row["title"], fontsize=13, weight="bold", transform=ax.transAxes)
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"] + 1:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        results: list[tuple[str, list[Series]]] = []
        try:
            for t in panel["targets"]:
                expr = substitute(t["expr"], variables or {}, known, rate_interval)
                series = (query(prom_url, expr, end) if panel["type"] == "gauge"
                          else query_range(prom_url, expr, end - span, end, step))
                results.append((t["legendFormat"], series))
        except PrometheusError as exc:
            ax.text(0.5, 0.5, f"query error: {exc}"[:80], ha="center", transform=ax.transAxes, fontsize=7)
            continue
        if not any(ss for _, ss in results):
            ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        with_data += 1
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if panel["type"] == "gauge":
            _draw_gauge(ax, panel, results)
        else:
            _draw_timeseries(ax, panel, results)
            _axis_units(ax, unit)
    fig.suptitle(f"{model['title']} (last {window})", fontsize=16, y=0.997)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return with_data
