"""Cardinality control on derived metrics: 100,000 distinct ids stay within the series limit, the overflow
series carries the rest (totals exact), forbidden keys never become labels, top-K folds into `other`."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from spanmetrics_helpers import DEFAULT_RULES, build, scrape

from bench.spanmetrics_workload import to_request
from processor.config_node import ConfigError

N = 100_000
LIMIT = 50


def _click_requests(n: int, per_request: int = 2000, seed: int = 3) -> list:
    """`n` clicks, each with a distinct user id and item id."""
    rng = random.Random(seed)
    out = []
    for start in range(0, n, per_request):
        spans = []
        for i in range(start, min(n, start + per_request)):
            s = Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name="reco.click",
                     kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=1, end_time_unix_nano=1 + (i % 7) * 1_000_000)
            for key, value in (("user.id", f"user-{i}"), ("reco.item_id", f"item-{i}"),
                               ("reco.placement", ("home", "cart")[i % 2])):
                kv = s.attributes.add()
                kv.key, kv.value.string_value = key, value
            spans.append(s)
        out.append(to_request(spans))
    return out


def _rules(tmp_path, body: str):
    path = tmp_path / "rules.yaml"
    path.write_text(body)
    return path


def test_100k_distinct_ids_stay_within_limit_and_totals_stay_exact(tmp_path) -> None:
    rules = _rules(tmp_path, f"""
rules:
  - name: item_clicks_total
    kind: counter
    spans: [reco.click]
    labels: {{item: {{attribute: reco.item_id}}, placement: {{attribute: reco.placement}}}}
    series_limit: {LIMIT}
  - name: item_click_seconds
    kind: histogram
    spans: [reco.click]
    buckets: [0.001, 0.004]
    labels: {{item: {{attribute: reco.item_id}}}}
    series_limit: {LIMIT}
""")
    stage, ctx = build("spanmetrics", {"rules": str(rules)})
    for request in _click_requests(N):
        stage.on_traces(request)
    m = scrape(ctx.registry)
    series = m.series("item_clicks_total")
    assert len(series) == LIMIT + 1
    assert m.total("item_clicks_total") == N
    assert m.value("item_clicks_total", otel_metric_overflow="true") == N - LIMIT
    assert all(s.get("otel_metric_overflow") == "true" or "item" in s for s in series)
    assert m.value("recohop_cardinality_active_series", metric="item_clicks_total") == LIMIT + 1
    assert m.value("recohop_cardinality_folded_total", metric="item_clicks_total") == N - LIMIT
    assert m.total("item_click_seconds_count") == N
    assert len(m.series("item_click_seconds_count")) == LIMIT + 1
    assert m.value("item_click_seconds_bucket", otel_metric_overflow="true", le="+Inf") == N - LIMIT
    # RED metrics are unaffected: one series for the one span name
    assert m.value("recohop_cardinality_active_series", metric="traces_span_metrics_calls_total") == 1


def test_user_ids_never_become_labels_with_default_rules() -> None:
    stage, ctx = build("spanmetrics", {"rules": str(DEFAULT_RULES)})
    for request in _click_requests(20_000):
        stage.on_traces(request)
    m = scrape(ctx.registry)
    assert m.total("reco_clicks_total") == 20_000
    assert len(m.series("reco_clicks_total")) == 2  # placements home and cart; no user/item dimension
    assert not any(v.startswith(("user-", "item-")) for (_, labels) in m.samples for _, v in labels)


@pytest.mark.parametrize("key", ["user.id", "user_id", "client.address", "reco.request_id"])
def test_rule_turning_forbidden_key_into_label_is_refused(tmp_path, key: str) -> None:
    rules = _rules(tmp_path, f"""
rules:
  - name: by_user_total
    kind: counter
    spans: [reco.click]
    labels: {{who: {{attribute: {key}}}}}
""")
    with pytest.raises(ConfigError) as err:
        build("spanmetrics", {"rules": str(rules)})
    message = str(err.value)
    assert str(rules) in message and "rules[0] 'by_user_total'.labels.who.attribute" in message
    assert "forbidden" in message


def test_stage_forbidden_keys_extend_the_defaults(tmp_path) -> None:
    rules = _rules(tmp_path, """
rules:
  - name: by_tenant_total
    kind: counter
    spans: [x]
    labels: {tenant: {attribute: tenant.id}}
""")
    build("spanmetrics", {"rules": str(rules)})  # allowed by default
    with pytest.raises(ConfigError, match="forbidden"):
        build("spanmetrics", {"rules": str(rules), "forbidden_keys": ["tenant.id"]})


def test_top_k_folds_the_tail_into_other(tmp_path) -> None:
    rules = _rules(tmp_path, """
rules:
  - name: item_clicks_total
    kind: counter
    spans: [reco.click]
    labels: {item: {attribute: reco.item_id}}
    top_k: 3
""")
    stage, ctx = build("spanmetrics", {"rules": str(rules)})
    rng = random.Random(5)
    spans = []
    weights = {"a": 50, "b": 40, "c": 30, "d": 5, "e": 2, "f": 1}
    for item, n in weights.items():
        for _ in range(n):
            s = Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name="reco.click")
            kv = s.attributes.add()
            kv.key, kv.value.string_value = "reco.item_id", item
            spans.append(s)
    stage.on_traces(to_request(spans))
    m = scrape(ctx.registry)
    assert {s["item"] for s in m.series("item_clicks_total")} == {"a", "b", "c", "other"}
    assert m.value("item_clicks_total", item="other") == 8
    assert m.total("item_clicks_total") == sum(weights.values())
