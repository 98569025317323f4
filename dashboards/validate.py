"""Evaluate every panel target of the generated dashboards against a real Prometheus.

Grafana is not available here, so this does what Grafana would: substitute the template variables into each
target's PromQL and run it through the Prometheus HTTP API. Used by the tests and by the end-to-end check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dashboards import build
from dashboards.promapi import PrometheusError, Series, query

ALL = ".*"  # every query variable's allValue
BUILTINS = ("__rate_interval", "__interval", "__range")
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

VariableValue = str | list[str] | None


@dataclass(frozen=True)
class PanelTarget:
    dashboard: str
    panel: str
    unit: str
    ref_id: str
    expr: str  # as written in the dashboard, with $variables
    legend: str


@dataclass
class TargetResult:
    ref_id: str
    expr: str  # after substitution
    series: list[Series] = field(default_factory=list)
    error: str | None = None


def panel_targets(models: Mapping[str, dict] | None = None) -> list[PanelTarget]:
    """Every (panel, target) of the dashboards, rows excluded, in dashboard order."""
    models = build.dashboards() if models is None else models
    found = []
    for model in models.values():
        for panel in model["panels"]:
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            for t in panel.get("targets", []):
                found.append(PanelTarget(model["title"], panel["title"], unit, t["refId"], t["expr"],
                                         t.get("legendFormat", "")))
    return found


def dashboard_variables(models: Mapping[str, dict] | None = None) -> set[str]:
    models = build.dashboards() if models is None else models
    return {v["name"] for m in models.values() for v in m["templating"]["list"]}


def _format(value: VariableValue) -> str:
    """Grafana's regex formatting of a variable value: All → `.*`, several values → `(a|b)`."""
    if value is None or value in ("$__all", "All"):
        return ALL
    if isinstance(value, str):
        return re.escape(value).replace("\\", "\\\\")
    if len(value) == 1:
        return _format(value[0])
    return "(" + "|".join(_format(v) for v in value) + ")"


def substitute(expr: str, variables: Mapping[str, VariableValue], known: Iterable[str],
               rate_interval: str = "1m") -> str:
    """Replace `$name`/`${name}` as Grafana does; variables not given default to All. Unknown names are errors."""
    known = set(known)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return rate_interval
        if name not in known:
            raise ValueError(f"{expr!r} uses ${name}, which is not a template variable")
        return _format(variables.get(name))

    return _VAR.sub(replace, expr)


def evaluate_panels(prom_url: str, variables: Mapping[str, VariableValue] | None = None, *,
                    rate_interval: str = "1m", at: float | None = None,
                    models: Mapping[str, dict] | None = None) -> dict[str, list[TargetResult]]:
    """Panel title → one result per target (instant query at `at`, default now). Query errors are recorded
    per target rather than raised, so one bad panel does not hide the others."""
    models = build.dashboards() if models is None else models
    known = dashboard_variables(models)
    results: dict[str, list[TargetResult]] = {}
    for target in panel_targets(models):
        expr = substitute(target.expr, variables or {}, known, rate_interval)
        result = TargetResult(target.ref_id, expr)
        try:
            result.series = query(prom_url, expr, at)
        except PrometheusError as exc:
            result.error = str(exc)
        results.setdefault(target.panel, []).append(result)
    return results
