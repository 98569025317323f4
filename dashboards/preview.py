"""Render the overview dashboard's panels from Prometheus query results into one PNG (Grafana is not needed).

The picture follows the dashboard's own grid (gridPos), legends (legendFormat), units and threshold lines,
so it shows what the Grafana dashboard would show for the same time range: every time axis spans exactly
the range named in the title, in clock time, and `$__rate_interval` is what Grafana would substitute
(`max(step + scrape interval, 4 × scrape interval)`) unless a window is given.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or in containers
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from dashboards import build  # noqa: E402
from dashboards.promapi import PrometheusError, Series, query, query_range  # noqa: E402
from dashboards.validate import VariableValue, dashboard_variables, substitute  # noqa: E402

OVERVIEW = "recommender-overview.json"
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_DURATION = re.compile(r"^(\d+)([smhd])$")


# Grafana unit ids → the y-axis label a reader understands ("short" is a plain number: no label).
_UNIT_LABELS = {"reqps": "requests/s", "cps": "per second", "short": ""}
GRAFANA_SCRAPE_INTERVAL = 15.0  # what Grafana assumes for a Prometheus datasource without `timeInterval`
POINTS = 120  # data points per series across the range


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration like 30m or 2h expected, got {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def grafana_rate_interval(step: float, scrape_interval: float) -> str:
    """Grafana's `$__rate_interval`: at least four scrapes, and at least one step plus one scrape."""
    return f"{math.ceil(max(step + scrape_interval, 4 * scrape_interval))}s"


def short_run_rate_window(run_seconds: float, scrape_interval: float) -> str:
    """A rate window for a history of `run_seconds`: a quarter of it (the line climbs for one window, then is
    flat for the rest of a run at constant load; shorter windows mostly show how unevenly spans arrive in
    batches), never fewer than four scrapes. A window longer than the history draws a line that climbs for
    the whole window although the load is constant."""
    return f"{math.ceil(max(4 * scrape_interval, run_seconds / 4))}s"


def _age(seconds: float) -> str:
    """A duration axis label in the unit a reader expects at that size."""
    size = abs(seconds)
    if size < 1:
        return f"{seconds * 1000:.0f} ms"
    if size < 10:
        return f"{seconds:.1f} s"
    if size < 120:
        return f"{seconds:.0f} s"
    if size < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _legend(fmt: str, labels: Mapping[str, str]) -> str:
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt) or ",".join(f"{k}={v}" for k, v in labels.items())


def _axis_units(ax: plt.Axes, unit: str) -> None:
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif unit == "s":
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _age(v)))
    elif _UNIT_LABELS.get(unit, unit):
        ax.set_ylabel(_UNIT_LABELS.get(unit, unit), fontsize=7)


def _thresholds(panel: dict) -> list[float]:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    return [s["value"] for s in steps if s.get("value") is not None]


def _clock(t: float) -> datetime:
    return datetime.fromtimestamp(t).astimezone()


def _draw_timeseries(ax: plt.Axes, panel: dict, results: list[tuple[str, list[Series]]],
                     start: float, end: float) -> None:
    """Lines over the whole range [start, end] in clock time: every panel shares the title's time axis."""
    lines = [([_clock(t) for t, _ in s.points], [v for _, v in s.points], _legend(fmt, s.labels))
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
    ax.set_xlim(_clock(start), _clock(end))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if end - start <= 3600 else "%H:%M",
                                                      tz=_clock(end).tzinfo))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
    ax.set_xlabel(f"time ({_clock(end).tzname()})", fontsize=6, labelpad=1)
    if lines:
        ax.legend(fontsize=6, loc="upper left", ncol=2)


def caption(title: str, start: float, end: float, rate_interval: str, step: float) -> str:
    """The picture's title: the exact range every time axis spans, and the windows behind the lines."""
    first, last = _clock(start), _clock(end)
    return (f"{title}: {first:%Y-%m-%d %H:%M:%S} to {last:%H:%M:%S} {last.tzname()} ({end - start:.0f}s); "
            f"rates over {rate_interval} windows, one point per {step:g} s; gauges at {last:%H:%M:%S}")


def _draw_gauge(ax: plt.Axes, panel: dict, results: list[tuple[str, list[Series]]]) -> None:
    bars = [(_legend(fmt, s.labels), s.value) for fmt, ss in results for s in ss]
    ax.barh([n for n, _ in bars], [v for _, v in bars], color="tab:green")
    ax.set_xlim(0, panel["fieldConfig"]["defaults"].get("max") or 1)
    percent = panel["fieldConfig"]["defaults"].get("unit") == "percentunit"
    if percent:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    for i, (_, v) in enumerate(bars):
        ax.text(v, i, f" {v:.1%}" if percent else f" {v:.3g}", va="center", fontsize=8)
    ax.set_xlabel("latest value per model version", fontsize=6, labelpad=1)


def render(prom_url: str, out: Path, variables: Mapping[str, VariableValue] | None = None,
           window: str = "30m", end: float | None = None, *, scrape_interval: float = GRAFANA_SCRAPE_INTERVAL,
           rate_interval: str | None = None) -> int:
    """Write the PNG of the `window` ending at `end` (default now); returns how many panels had data (0
    means the picture is all "No data"). `rate_interval` (default: Grafana's, from the step and
    `scrape_interval`) replaces `$__rate_interval`."""
    model = build.dashboards()[OVERVIEW]
    known = dashboard_variables({OVERVIEW: model})
    end = time.time() if end is None else end
    span = parse_duration(window)
    start = end - span
    step = max(span / POINTS, 1.0)
    rate_interval = rate_interval or grafana_rate_interval(step, scrape_interval)
    panels = [p for p in model["panels"] if p["type"] != "row"]
    rows = [p for p in model["panels"] if p["type"] == "row"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in model["panels"])
    fig = plt.figure(figsize=(18, height * 0.32))
    grid = fig.add_gridspec(height, 24, hspace=1.6, wspace=1.5, top=0.98, bottom=0.02, left=0.04, right=0.98)
    with_data = 0
    for row in rows:
        ax = fig.add_subplot(grid[row["gridPos"]["y"], :])
        ax.axis("off")
        # Low in its cell, clear of the time-axis label of the panel above it.
        ax.text(0, -0.8, row["title"], fontsize=13, weight="bold", va="center", transform=ax.transAxes)
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
                          else query_range(prom_url, expr, start, end, step))
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
            _draw_timeseries(ax, panel, results, start, end)
            _axis_units(ax, unit)
    fig.suptitle(caption(model["title"], start, end, rate_interval, step), fontsize=14, y=0.997)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return with_data
