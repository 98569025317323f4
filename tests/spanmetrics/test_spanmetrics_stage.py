"""The spanmetrics stage on recommender-shaped protobuf requests: exact RED and recommender counts on
/metrics (OpenMetrics) and in the OTLP output of `flush`."""

from __future__ import annotations

import bisect

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from spanmetrics_helpers import DEFAULT_RULES, Truth, build, scrape

from bench.spanmetrics_workload import CHILDREN, SERVICE, make_recos, requests_for
from processor.stages.spanmetrics import DEFAULT_BUCKETS

RECOS = make_recos(600, seed=11)
TRUTH = Truth.of(RECOS)
SVC = {"service_name": SERVICE}


@pytest.fixture(scope="module")
def fed():
    stage, ctx = build("spanmetrics", {"rules": str(DEFAULT_RULES), "flush_interval": "5s"})
    requests = requests_for(RECOS, batch=40)
    for request in requests:
        before = request.SerializeToString()
        assert stage.on_traces(request) == [request]
        assert request.SerializeToString() == before  # read-only stage
    return stage, ctx, requests


def test_stage_is_read_only(fed) -> None:
    stage, _, _ = fed
    assert stage.mutates is False and stage.name == "spanmetrics" and stage.flush_interval == 5.0


def test_red_calls_and_errors_are_exact(fed) -> None:
    _, ctx, requests = fed
    m = scrape(ctx.registry)
    spans = sum(len(ss.spans) for r in requests for rs in r.resource_spans for ss in rs.scope_spans)
    assert m.total("traces_span_metrics_calls_total") == spans
    errors = sum(1 for r in RECOS if r.error)
    assert errors > 0
    assert m.value("traces_span_metrics_calls_total", **SVC, span_name="reco.generate",
                   span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_ERROR") == errors
    assert m.value("traces_span_metrics_calls_total", **SVC, span_name="reco.generate",
                   span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_UNSET") == len(RECOS) - errors
    for child in CHILDREN:
        assert m.total("traces_span_metrics_calls_total", span_name=child, span_kind="SPAN_KIND_INTERNAL") \
            == len(RECOS)
    clicks = sum(len(r.clicks) for r in RECOS)
    assert m.total("traces_span_metrics_calls_total", span_name="reco.click") == clicks


def test_red_duration_histogram_buckets(fed) -> None:
    _, ctx, _ = fed
    m = scrape(ctx.registry)
    les = [str(b) for b in DEFAULT_BUCKETS] + ["+Inf"]
    for status, is_error in (("STATUS_CODE_UNSET", False), ("STATUS_CODE_ERROR", True)):
        durations = [r.root_ms / 1000 for r in RECOS if r.error == is_error]
        for bound, le in zip([*DEFAULT_BUCKETS, float("inf")], les, strict=True):
            assert m.value("traces_span_metrics_duration_seconds_bucket", **SVC, span_name="reco.generate",
                           span_kind="SPAN_KIND_SERVER", status_code=status, le=le) \
                == sum(1 for d in durations if d <= bound + 1e-12)
        total = m.value("traces_span_metrics_duration_seconds_sum", **SVC, span_name="reco.generate",
                        span_kind="SPAN_KIND_SERVER", status_code=status)
        assert total == pytest.approx(sum(durations))


def test_recommender_counts_are_exact(fed) -> None:
    _, ctx, _ = fed
    m = scrape(ctx.registry)
    assert m.total("reco_requests_total") == len(RECOS)
    assert m.total("reco_requests_total", cold_start="true") == sum(
        n for (_, cold, _), n in TRUTH.requests.items() if cold)
    assert m.total("reco_requests_total", status_code="STATUS_CODE_ERROR") == sum(
        n for (_, _, err), n in TRUTH.requests.items() if err)
    for (placement, bucket), n in TRUTH.clicks.items():
        assert m.total("reco_clicks_total", placement=placement, position_bucket=bucket) == n
    for (placement, bucket), n in TRUTH.impressions.items():
        assert m.total("reco_impressions_total", placement=placement, position_bucket=bucket) == n
    assert {s["position_bucket"] for s in m.series("reco_impressions_total")} <= {"1", "2-3", "4-10", "11+"}
    for placement, n in TRUTH.conversions.items():
        assert m.total("reco_conversions_total", placement=placement) == n
        assert m.total("reco_revenue_total", placement=placement) == pytest.approx(TRUTH.revenue[placement])
    for (placement, hit), n in TRUTH.cache.items():
        assert m.total("reco_cache_lookups_total", placement=placement, cache_hit=str(hit).lower()) == n


def test_stage_duration_histogram(fed) -> None:
    _, ctx, _ = fed
    m = scrape(ctx.registry)
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    durations = sorted(r.root_ms / 1000 for r in RECOS)
    for bound in bounds:
        assert m.total("reco_stage_duration_seconds_bucket", stage="reco.generate", le=str(bound)) \
            == bisect.bisect_right(durations, bound)
    assert m.total("reco_stage_duration_seconds_count", stage="reco.post_process") == len(RECOS)


def test_no_personal_data_in_labels(fed) -> None:
    _, ctx, _ = fed
    m = scrape(ctx.registry)
    values = {v for (_, labels) in m.samples for _, v in labels}
    keys = {k for (_, labels) in m.samples for k, _ in labels}
    assert not any(v.startswith("user-") or "@" in v or v == "10.0.0.1" for v in values)
    assert not keys & {"user_id", "user_email", "client_address", "request_id"}


def test_flush_emits_cumulative_otlp_equal_to_exposition(fed) -> None:
    stage, ctx, _ = fed
    emitted = stage.flush(0.0)
    assert emitted is not None and len(emitted.metrics) == 1
    metrics = {m.name: m for m in emitted.metrics[0].resource_metrics[0].scope_metrics[0].metrics}
    assert {"traces_span_metrics_calls", "traces_span_metrics_duration_seconds", "reco_requests", "reco_clicks",
            "reco_impressions", "reco_conversions", "reco_revenue", "reco_cache_lookups",
            "reco_stage_duration_seconds"} == set(metrics)
    clicks = metrics["reco_clicks"].sum
    assert clicks.is_monotonic
    assert clicks.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    assert sum(dp.as_int for dp in clicks.data_points) == sum(len(r.clicks) for r in RECOS)
    revenue = sum(dp.as_double for dp in metrics["reco_revenue"].sum.data_points)
    assert revenue == pytest.approx(sum(TRUTH.revenue.values()))
    hist = metrics["traces_span_metrics_duration_seconds"].histogram
    assert hist.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    m = scrape(ctx.registry)
    assert sum(dp.count for dp in hist.data_points) == m.total("traces_span_metrics_calls_total")
    for dp in hist.data_points:
        assert sum(dp.bucket_counts) == dp.count and list(dp.explicit_bounds) == DEFAULT_BUCKETS
    # cumulative: a second flush without new spans repeats the same totals
    again = stage.flush(1.0).metrics[0].resource_metrics[0].scope_metrics[0].metrics  # type: ignore[union-attr]
    assert sum(dp.as_int for m2 in again if m2.name == "reco_clicks" for dp in m2.sum.data_points) \
        == sum(len(r.clicks) for r in RECOS)


def test_otlp_output_can_be_disabled_and_red_only_works() -> None:
    stage, ctx = build("spanmetrics", {"otlp_output": False})
    for request in requests_for(RECOS[:20]):
        stage.on_traces(request)
    assert stage.flush(0.0) is None
    m = scrape(ctx.registry)
    assert m.total("traces_span_metrics_calls_total", span_name="reco.generate") == 20
    assert not m.series("reco_requests_total")
