"""Exemplars never dangle: only traces that tail sampling reports kept (on the decision bus) appear as
exemplars, on /metrics (OpenMetrics) and in the OTLP output; without decisions there are none."""

from __future__ import annotations

from spanmetrics_helpers import DEFAULT_RULES, build, scrape

from bench.spanmetrics_workload import make_recos, requests_for

RECOS = make_recos(400, seed=23)


def _feed(config: dict):
    stage, ctx = build("spanmetrics", config)
    for request in requests_for(RECOS, batch=10):
        stage.on_traces(request)
    return stage, ctx


def test_exemplars_only_for_kept_traces() -> None:
    stage, ctx = _feed({"rules": str(DEFAULT_RULES), "exemplars": {"per_bucket": 8}})
    kept = {r.trace_id for r in RECOS if r.error or r.root_ms >= 700}  # what an errors+latency policy keeps
    dropped = [r.trace_id for r in RECOS if r.trace_id not in kept]
    for trace_id in dropped:
        ctx.decisions.publish(trace_id, False, "probabilistic")
    for trace_id in kept:
        ctx.decisions.publish(trace_id, True, "errors-or-slow")
    m = scrape(ctx.registry)
    seen = {ex["trace_id"] for _, _, ex in m.exemplars}
    assert seen, "kept slow/error traces must produce exemplars"
    assert seen <= {t.hex() for t in kept}
    # slow roots land in their own bucket, so they are candidates and get an exemplar there
    slow = [(labels, ex) for name, labels, ex in m.exemplars
            if name == "traces_span_metrics_duration_seconds_bucket" and labels["span_name"] == "reco.generate"
            and labels["le"] == "0.8"]
    assert slow and all(bytes.fromhex(ex["trace_id"]) in kept for _, ex in slow)
    assert all(len(ex["span_id"]) == 16 for _, _, ex in m.exemplars)
    otlp = stage.flush(0.0).metrics[0]  # type: ignore[union-attr]
    otlp_ids = {e.trace_id for rm in otlp.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
                if metric.HasField("histogram") for dp in metric.histogram.data_points for e in dp.exemplars}
    assert otlp_ids and otlp_ids <= kept


def test_no_decisions_no_exemplars() -> None:
    stage, ctx = _feed({"rules": str(DEFAULT_RULES)})
    m = scrape(ctx.registry)
    assert m.exemplars == []
    otlp = stage.flush(0.0).metrics[0]  # type: ignore[union-attr]
    assert not any(dp.exemplars for rm in otlp.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
                   if metric.HasField("histogram") for dp in metric.histogram.data_points)


def test_decision_after_candidate_expired_attaches_nothing() -> None:
    now = [0.0]
    from prometheus_client import CollectorRegistry

    from processor.stages.base import StageContext

    ctx = StageContext(registry=CollectorRegistry(), clock=lambda: now[0])
    stage, ctx = build("spanmetrics", {"exemplars": {"max_wait": "10s"}}, ctx=ctx)
    for request in requests_for(RECOS[:50]):
        stage.on_traces(request)
    now[0] = 11.0
    stage.flush(now[0])  # expires the waiting candidates
    for r in RECOS[:50]:
        ctx.decisions.publish(r.trace_id, True, "late")
    assert scrape(ctx.registry).exemplars == []


def test_exemplars_disabled() -> None:
    stage, ctx = build("spanmetrics", {"exemplars": {"enabled": False}})
    for request in requests_for(RECOS[:50]):
        stage.on_traces(request)
    for r in RECOS[:50]:
        ctx.decisions.publish(r.trace_id, True, "all")
    assert scrape(ctx.registry).exemplars == []
