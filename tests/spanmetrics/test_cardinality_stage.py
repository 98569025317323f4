"""The `cardinality` stage on OTLP metrics passing through (made by the OpenTelemetry SDK): forbidden keys
dropped, allowlists, value buckets, series limit with an exact overflow point, top-K; and in a pipeline after
spanmetrics."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from spanmetrics_helpers import DEFAULT_RULES, build, scrape

from bench.spanmetrics_workload import make_recos, requests_for
from processor.config_node import ConfigError, Node
from processor.pipeline import build_pipeline
from processor.stages.base import Emitted, StageContext


def sdk_request(record) -> object:
    """Whatever `record(meter)` does, exported once by the SDK as an ExportMetricsServiceRequest."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "shop"}))
    record(provider.get_meter("test"))
    data = reader.get_metrics_data()
    provider.shutdown()
    return encode_metrics(data)


def points(request, name: str) -> list:
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    return list(getattr(m, m.WhichOneof("data")).data_points)
    raise AssertionError(f"{name} not in request")


def attrs(dp) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in dp.attributes}


def test_forbidden_keys_are_dropped_and_points_merged_exactly() -> None:
    def record(meter):
        c = meter.create_counter("reco.clicks")
        for i in range(1000):
            c.add(i % 3 + 1, {"user.id": f"user-{i}", "reco.placement": ("home", "cart")[i % 2]})

    request = sdk_request(record)
    before = sum(dp.as_int for dp in points(request, "reco.clicks"))
    stage, ctx = build("cardinality", {})
    assert stage.on_metrics(request) == [request]
    after = points(request, "reco.clicks")
    assert sorted(attrs(dp)["reco.placement"] for dp in after) == ["cart", "home"]
    assert all("user.id" not in attrs(dp) for dp in after)
    assert sum(dp.as_int for dp in after) == before


def test_allowlist_and_value_buckets_on_histograms() -> None:
    def record(meter):
        h = meter.create_histogram("reco.click.latency", unit="ms")
        for i in range(200):
            h.record(float(i), {"reco.position": i % 20 + 1, "reco.placement": "home", "noise": f"n{i}"})

    request = sdk_request(record)
    stage, _ = build("cardinality", {"metrics": [
        {"name": "reco.click.latency", "allow": ["reco.position", "reco.placement"],
         "bucket": {"reco.position": [1, 3, 10]}}]})
    stage.on_metrics(request)
    after = points(request, "reco.click.latency")
    by_bucket = {attrs(dp)["reco.position"]: dp for dp in after}
    assert set(by_bucket) == {"1", "2-3", "4-10", "11+"}
    assert all(set(attrs(dp)) == {"reco.position", "reco.placement"} for dp in after)
    expected = {"1": 10, "2-3": 20, "4-10": 70, "11+": 100}  # positions i%20+1 over 200 records
    assert {k: dp.count for k, dp in by_bucket.items()} == expected
    assert sum(dp.sum for dp in after) == pytest.approx(sum(range(200)))
    assert all(sum(dp.bucket_counts) == dp.count for dp in after)


def test_series_limit_folds_into_exact_overflow_point() -> None:
    def record(meter):
        c = meter.create_counter("item.views")
        for i in range(500):
            c.add(2, {"reco.item_id": f"i{i}"})

    stage, ctx = build("cardinality", {"series_limit": 20})
    request = sdk_request(record)
    stage.on_metrics(request)
    after = points(request, "item.views")
    overflow = [dp for dp in after if attrs(dp) == {"otel.metric.overflow": True}]
    assert len(after) == 21 and len(overflow) == 1
    assert overflow[0].as_int == 2 * 480
    assert sum(dp.as_int for dp in after) == 1000
    m = scrape(ctx.registry)
    assert m.value("recohop_cardinality_active_series", metric="item.views") == 21
    assert m.value("recohop_cardinality_folded_total", metric="item.views") == 480
    # a later export of the same series keeps the same admitted set (sticky admission)
    request2 = sdk_request(record)
    stage.on_metrics(request2)
    assert {tuple(sorted(attrs(dp).items())) for dp in points(request2, "item.views")} == \
        {tuple(sorted(attrs(dp).items())) for dp in after}


def test_top_k_per_request() -> None:
    def record(meter):
        c = meter.create_counter("model.calls")
        for model, n in (("m1", 50), ("m2", 30), ("m3", 3), ("m4", 2)):
            c.add(n, {"model": model})

    stage, _ = build("cardinality", {"metrics": [{"name_regex": "^model\\.", "top_k": 2}]})
    request = sdk_request(record)
    stage.on_metrics(request)
    assert {attrs(dp)["model"]: dp.as_int for dp in points(request, "model.calls")} == \
        {"m1": 50, "m2": 30, "other": 5}


def test_gauges_keep_latest_and_untouched_metrics_stay_identical() -> None:
    def record(meter):
        meter.create_counter("plain").add(1, {"reco.placement": "home"})
        g = meter.create_gauge("queue.depth")
        g.set(5, {"user.id": "a", "q": "x"})
        g.set(7, {"user.id": "b", "q": "x"})

    request = sdk_request(record)
    plain_before = [dp.SerializeToString() for dp in points(request, "plain")]
    stage, _ = build("cardinality", {})
    stage.on_metrics(request)
    assert [dp.SerializeToString() for dp in points(request, "plain")] == plain_before
    gauge = points(request, "queue.depth")
    assert len(gauge) == 1 and attrs(gauge[0]) == {"q": "x"}


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"metrics\[0\].name"):
        build("cardinality", {"metrics": [{"allow": ["a"]}]})
    with pytest.raises(ConfigError, match=r"metrics\[0\].allow.*forbidden"):
        build("cardinality", {"metrics": [{"name": "x", "allow": ["user.id"]}]})
    with pytest.raises(ConfigError, match=r"metrics\[0\].bucket.p"):
        build("cardinality", {"metrics": [{"name": "x", "bucket": {"p": "1-3"}}]})
    with pytest.raises(ConfigError, match=r"metrics\[0\].top_k"):
        build("cardinality", {"metrics": [{"name": "x", "top_k": 0}]})


def test_spanmetrics_then_cardinality_in_a_pipeline(tmp_path) -> None:
    """Derived metrics flushed by spanmetrics continue through the cardinality stage to the sink."""
    out: list[Emitted] = []
    ctx = StageContext(registry=CollectorRegistry(), clock=lambda: 100.0)
    nodes = [Node({"type": "spanmetrics", "rules": str(DEFAULT_RULES), "flush_interval": "1s"}, "hop.yaml",
                  "pipeline[0]"),
             Node({"type": "cardinality", "metrics": [{"name": "reco_clicks", "allow": ["placement"]}]},
                  "hop.yaml", "pipeline[1]")]
    pipeline = build_pipeline(nodes, ctx, out.append)
    assert not pipeline.forwards_unchanged  # cardinality rewrites metrics
    recos = make_recos(200, seed=3)
    for request in requests_for(recos):
        pipeline.process(Emitted(traces=[request]))
    pipeline.flush_due(now=1000.0)
    assert len(out) == 1 and len(out[0].metrics) == 1
    clicks = points(out[0].metrics[0], "reco_clicks")
    assert {tuple(attrs(dp)) for dp in clicks} == {("placement",)}
    assert sum(dp.as_int for dp in clicks) == sum(len(r.clicks) for r in recos)


def test_two_cumulative_points_of_one_series_in_a_request_keep_the_latest() -> None:
    """Two collection cycles batched into one request: the running total of a series is its latest point, so a
    fold of user ids must add each user's latest total once, not both of its totals."""
    def record(meter):
        c = meter.create_counter("reco.clicks")
        for i in range(10):
            c.add(2, {"user.id": f"user-{i}", "reco.placement": "home"})

    first = sdk_request(record)
    second = type(first)()
    second.CopyFrom(first)
    for dp in points(second, "reco.clicks"):
        dp.time_unix_nano += 10**9
        dp.as_int += 1  # the later cycle: each user's total grew from 2 to 3
    metric = second.resource_metrics[0].scope_metrics[0].metrics[0]
    metric.sum.data_points.extend(points(first, "reco.clicks"))  # both cycles in one request, the later first
    stage, _ = build("cardinality", {})
    stage.on_metrics(second)
    after = points(second, "reco.clicks")
    assert [attrs(dp) for dp in after] == [{"reco.placement": "home"}]
    assert after[0].as_int == 30
