"""Panel shapes shared by the dashboards: one helper per shape, so a dashboard module reads like the dashboard.

Every panel and target points at the `$datasource` template variable; ids and grid positions are assigned by
`layout`, in definition order, so the generated JSON is stable from build to build.
"""

from __future__ import annotations

import attr
from grafanalib import core as g

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"  # Grafana's rate window: at least four scrape intervals
HALF = 12
THIRD = 8
QUARTER = 6
FULL = 24


@attr.s
class PromTarget:
    """A Prometheus query in Grafana 10/11's shape (grafanalib's Target predates `exemplar`/`range`)."""

    expr: str = attr.ib()
    legendFormat: str = attr.ib(default="")
    refId: str = attr.ib(default="A")
    exemplar: bool = attr.ib(default=False)
    instant: bool = attr.ib(default=False)

    def to_json_data(self) -> dict:
        return {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "exemplar": self.exemplar,
            "expr": self.expr,
            "instant": self.instant,
            "legendFormat": self.legendFormat,
            "range": not self.instant,
            "refId": self.refId,
        }


def targets(*queries: tuple[str, str], exemplar: bool = False, instant: bool = False) -> list[PromTarget]:
    """(expr, legend) pairs → targets with refIds A, B, C …"""
    return [PromTarget(expr, legend, chr(ord("A") + i), exemplar, instant) for i, (expr, legend) in enumerate(queries)]


def steps(base: str, *levels: tuple[float, str]) -> list[dict]:
    """Grafana threshold steps: `base` colour below the first level, then each (value, colour)."""
    return [{"color": base, "value": None}] + [{"color": col, "value": v} for v, col in levels]


def upper_limit(limit: float) -> list[dict]:
    """Green below, red from `limit` (latency, error rate, spikes)."""
    return steps("green", (limit, "red"))


def lower_limit(limit: float) -> list[dict]:
    """Red below `limit`, green from it (CTR)."""
    return steps("red", (limit, "green"))


def timeseries(title: str, queries: list[PromTarget], unit: str, *, description: str = "",
               thresholds: list[dict] | None = None, stacked: bool = False, w: int = HALF, h: int = 8) -> g.TimeSeries:
    return g.TimeSeries(
        title=title, description=description, dataSource=DATASOURCE, targets=queries, unit=unit,
        thresholds=thresholds or steps("green"), thresholdsStyleMode="dashed" if thresholds else "off",
        stacking={"mode": "normal", "group": "A"} if stacked else {}, fillOpacity=30 if stacked else 0,
        legendDisplayMode="table", legendPlacement="right" if w == FULL else "bottom", legendCalcs=["mean", "max"],
        tooltipMode="multi", gridPos=g.GridPos(h=h, w=w, x=0, y=0),
        extraJson={"options": {"legend": {"showLegend": True}}},  # required since Grafana 9; grafanalib omits it
    )


@attr.s
class Gauge(g.GaugePanel):
    """A Grafana 10 gauge: grafanalib's GaugePanel writes pre-v7 field options (`calcs`, `override` in the
    field defaults), so the whole fieldConfig is written here, as Grafana's schema has it."""

    def to_json_data(self) -> dict:
        data = super().to_json_data()
        data["fieldConfig"] = {
            "defaults": {"unit": self.format, "min": self.min, "max": self.max, "mappings": [],
                         "thresholds": {"mode": "absolute", "steps": self.thresholds}},
            "overrides": [],
        }
        return data


def gauge(title: str, queries: list[PromTarget], unit: str, *, description: str = "", thresholds: list[dict],
          max_value: float = 1.0, w: int = THIRD, h: int = 6) -> Gauge:
    return Gauge(
        title=title, description=description, dataSource=DATASOURCE, targets=queries, format=unit,
        min=0, max=max_value, thresholds=thresholds, gridPos=g.GridPos(h=h, w=w, x=0, y=0),
        extraJson={
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "showThresholdLabels": False, "showThresholdMarkers": True,
                "orientation": "auto", "sizing": "auto", "minVizHeight": 75, "minVizWidth": 75,
            },
        },
    )


def layout(sections: list[tuple[str, list[g.Panel]]]) -> list[g.Panel]:
    """Rows of panels laid out left to right, wrapping at 24 columns; ids 1, 2, 3 … in that order."""
    out: list[g.Panel] = []
    y = 0
    next_id = 1
    for title, panels in sections:
        out.append(g.RowPanel(title=title, id=next_id, gridPos=g.GridPos(h=1, w=FULL, x=0, y=y)))
        next_id += 1
        y += 1
        x = 0
        row_h = 0
        for panel in panels:
            w, h = panel.gridPos.w, panel.gridPos.h
            if x + w > FULL:
                x, y, row_h = 0, y + row_h, 0
            out.append(attr.evolve(panel, id=next_id, gridPos=g.GridPos(h=h, w=w, x=x, y=y)))
            next_id += 1
            x += w
            row_h = max(row_h, h)
        y += row_h
    return out


def query_var(name: str, label: str, query: str) -> g.Template:
    """A multi-select label_values variable whose "All" is the regex `.*` (so `=~"$name"` always matches)."""
    var = g.Template(
        name=name, label=label, query=query, dataSource=DATASOURCE, includeAll=True, multi=True, allValue=".*",
        default="$__all", refresh=g.REFRESH_ON_TIME_RANGE_CHANGE, sort=1,
    )
    var._current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return var


def datasource_var() -> g.Template:
    return g.Template(name="datasource", label="Data source", query="prometheus", type="datasource", default="")


def dashboard(title: str, uid: str, description: str, variables: list[g.Template], panels: list[g.Panel],
              links: list[g.DashboardLink]) -> g.Dashboard:
    return g.Dashboard(
        title=title, uid=uid, description=description, tags=["recohop"], timezone="browser", refresh="30s",
        schemaVersion=39, graphTooltip=1, editable=True, templating=g.Templating(list=variables),
        panels=panels, links=links, time=g.Time("now-1h", "now"),
    )
