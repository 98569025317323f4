"""The generated Grafana JSON is well formed: datasource, targets and unit on every panel, unique ids, every
template variable used, only contract metric names, thresholds equal to the alert thresholds."""

from __future__ import annotations

import re

import pytest

from dashboards import alerts, build, recording
from dashboards import contract as c
from dashboards.validate import dashboard_variables, panel_targets, substitute

MODELS = build.dashboards()
CONTRACT_METRICS = {v for k, v in vars(c).items() if k.isupper() and isinstance(v, str) and v.startswith(
    ("reco_", "recohop_", "traces_span_metrics_"))}
RECORDED = {r.record for r in recording.RULES}


def _panels(model: dict) -> list[dict]:
    return [p for p in model["panels"] if p["type"] != "row"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_panel_has_datasource_targets_and_unit(name: str) -> None:
    model = MODELS[name]
    assert _panels(model), name
    for panel in _panels(model):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ids_unique_and_grid_does_not_overlap(name: str) -> None:
    model = MODELS[name]
    ids = [p["id"] for p in model["panels"]]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and i > 0 for i in ids)
    taken: set[tuple[int, int]] = set()
    for panel in model["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_uids_and_panel_titles_unique() -> None:
    uids = [m["uid"] for m in MODELS.values()]
    assert len(set(uids)) == len(uids) and all(uids)
    titles = [t for t in {(t.dashboard, t.panel) for t in panel_targets(MODELS)}]
    assert len({p for _, p in titles}) == len(titles), "evaluate_panels keys results by panel title"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_template_variable_used_and_defined(name: str) -> None:
    model = MODELS[name]
    defined = {v["name"] for v in model["templating"]["list"]}
    text = " ".join(t["expr"] for p in _panels(model) for t in p["targets"])
    text += " " + " ".join(str(p["datasource"]) for p in _panels(model))
    used = set(re.findall(r"\$\{?(\w+)", text)) - {"__rate_interval", "__interval", "__range"}
    assert used == defined, (used, defined)
    for target in panel_targets({name: model}):
        substitute(target.expr, {}, defined)  # raises on an undefined variable


def test_overview_has_the_requested_variables_and_every_stage() -> None:
    overview = MODELS["recommender-overview.json"]
    assert {v["name"] for v in overview["templating"]["list"]} == {"datasource", "service", "placement", "variant"}
    titles = {p["title"] for p in _panels(overview)}
    assert {f"{stage} latency" for stage in c.STAGES} <= titles
    stage_panels = [p for p in _panels(overview) if p["title"].endswith(" latency")]
    assert all(t["exemplar"] for p in stage_panels for t in p["targets"])
    assert dashboard_variables(MODELS) >= {"datasource", "instance"}


_RECORDED_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
_RAW_NAME = re.compile(r"\b(?:reco|recohop|traces_span_metrics)_[a-z0-9_]+\b")


def _names(expr: str) -> tuple[set[str], set[str]]:
    """(raw metric names, recorded series names) in a PromQL expression."""
    recorded = set(_RECORDED_NAME.findall(expr))
    return set(_RAW_NAME.findall(_RECORDED_NAME.sub(" ", expr))), recorded


def test_queries_name_only_contract_metrics_and_recorded_series() -> None:
    exprs = [(t.panel, t.expr) for t in panel_targets(MODELS)]
    exprs += [(r.record, r.expr) for r in recording.RULES] + [(a.name, a.expr) for a in alerts.ALERTS]
    for where, expr in exprs:
        raw, recorded = _names(expr)
        assert raw <= CONTRACT_METRICS, (where, raw - CONTRACT_METRICS)
        assert recorded <= RECORDED, (where, recorded - RECORDED)
    used = {name for _, expr in exprs for name in _names(expr)[1]}
    assert used == RECORDED, f"recorded but never queried: {RECORDED - used}"


def _steps(title: str) -> list[float]:
    for model in MODELS.values():
        for panel in _panels(model):
            if panel["title"] == title:
                steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                return [s["value"] for s in steps if s["value"] is not None]
    raise AssertionError(f"no panel {title!r}")


def test_panel_thresholds_match_alert_thresholds() -> None:
    assert _steps("CTR by placement") == [alerts.CTR_MIN]
    assert _steps("A/B CTR by variant") == [alerts.CTR_MIN]
    assert _steps("reco.generate latency") == [alerts.GENERATE_P95_MAX_SECONDS]
    assert _steps("A/B reco.generate p95 by variant") == [alerts.GENERATE_P95_MAX_SECONDS]
    assert _steps("Error rate") == [alerts.ERROR_RATIO_MAX]
    assert _steps("Fallback rate") == [alerts.FALLBACK_SPIKE_FLOOR]
    assert _steps("Cold-start rate") == [alerts.COLD_START_SPIKE_FLOOR]
    assert _steps("Decided early share") == [alerts.DECIDED_EARLY_RATIO_MAX]
    assert f"{alerts.CTR_MIN}" in next(a.expr for a in alerts.ALERTS if a.name == "RecoLowCTR")


def test_alerts_carry_for_severity_and_runbook_section() -> None:
    runbook = (build.Path(__file__).resolve().parents[2] / alerts.RUNBOOK).read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    for alert in alerts.ALERTS:
        rule = alert.to_dict()
        assert re.fullmatch(r"\d+m", rule["for"]) and rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["runbook_url"].split("#")[1] in anchors, alert.name
