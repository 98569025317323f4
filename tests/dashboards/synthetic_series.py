"""A prometheus_client collector exposing the telemetry contract's series with known, exact rates.

Counters grow linearly with time (value = rate × elapsed), so Prometheus' `rate()` recovers the rates exactly
and every ratio a dashboard computes has a ground truth to compare against.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dashboards import contract as c

REQUESTS_PER_SECOND = 10.0  # per (placement, variant)
IMPRESSIONS_PER_REQUEST = 5.0
BASE_CTR = {"home": 0.12, "product_page": 0.08, "cart": 0.06, "email": 0.03}
VARIANT_CTR_FACTOR = {"A": 1.0, "B": 1.25}
CONVERSIONS_PER_CLICK = 0.2
REVENUE_PER_CONVERSION = 15.0
CACHE_HIT = 0.8
# Mutually exclusive request kinds → (share, cold_start, fallback, status_code)
REQUEST_KINDS = (
    (0.83, "false", "false", "STATUS_CODE_UNSET"),
    (0.02, "false", "false", c.STATUS_ERROR),
    (0.10, "true", "true", "STATUS_CODE_UNSET"),
    (0.05, "false", "true", "STATUS_CODE_UNSET"),
)
ERROR_RATE = 0.02
COLD_START_RATE = 0.10
FALLBACK_RATE = 0.15
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_SHARES = (0.05, 0.15, 0.3, 0.25, 0.15, 0.06, 0.03, 0.01)  # share of observations per bucket; sums to 1
MODEL_QUALITY = {c.MODEL_NDCG: 0.31, c.MODEL_COVERAGE: 0.62, c.MODEL_DIVERSITY: 0.47}
MODEL_AGE_SECONDS = 3600.0


def ctr(placement: str, variant: str | None = None) -> float:
    """Ground-truth CTR; impressions are equal across variants, so a placement's CTR is the variants' mean."""
    if variant:
        return BASE_CTR[placement] * VARIANT_CTR_FACTOR[variant]
    return sum(ctr(placement, v) for v in c.VARIANTS) / len(c.VARIANTS)


class SyntheticContract(Collector):
    def __init__(self) -> None:
        self.start = time.time() - 1.0

    def _histogram(self, family: HistogramMetricFamily, values: list[str], per_second: float,
                   scale: float = 1.0) -> None:
        count = per_second * (time.time() - self.start)
        cumulative, buckets = 0.0, []
        for bound, share in zip(LATENCY_BUCKETS, LATENCY_SHARES, strict=True):
            cumulative += share * count
            buckets.append((repr(bound * scale), cumulative))
        buckets.append(("+Inf", count))
        family.add_metric(values, buckets, sum_value=count * 0.05 * scale)

    def collect(self) -> Iterator:
        t = time.time() - self.start
        r = REQUESTS_PER_SECOND
        requests = CounterMetricFamily("reco_requests", "", labels=[
            "service_name", "placement", "model_version", "variant", "strategy", "cold_start", "fallback",
            "status_code"])
        impressions = CounterMetricFamily("reco_impressions", "", labels=[
            "placement", "model_version", "variant", "position_bucket"])
        clicks = CounterMetricFamily("reco_clicks", "", labels=["placement", "model_version", "variant",
                                                                "position_bucket"])
        conversions = CounterMetricFamily("reco_conversions", "", labels=["placement", "model_version", "variant"])
        revenue = CounterMetricFamily("reco_revenue", "", labels=["placement", "model_version", "variant"])
        cache = CounterMetricFamily("reco_cache_lookups", "", labels=["placement", "cache_hit"])
        stages = HistogramMetricFamily("reco_stage_duration_seconds", "", labels=[
            "stage", "placement", "model_version", "variant"])
        for p in c.PLACEMENTS:
            cache.add_metric([p, "true"], CACHE_HIT * r * t)
            cache.add_metric([p, "false"], (1 - CACHE_HIT) * r * t)
            for v in c.VARIANTS:
                for share, cold, fallback, status in REQUEST_KINDS:
                    strategy = "popularity" if fallback == "true" else "cf"
                    requests.add_metric([c.SERVICE, p, "v1", v, strategy, cold, fallback, status], share * r * t)
                shown = IMPRESSIONS_PER_REQUEST * r * t
                for bucket, part in (("1", 0.2), ("2-3", 0.4), ("4-10", 0.4)):
                    impressions.add_metric([p, "v1", v, bucket], part * shown)
                    clicks.add_metric([p, "v1", v, bucket], part * shown * ctr(p, v))
                converted = shown * ctr(p, v) * CONVERSIONS_PER_CLICK
                conversions.add_metric([p, "v1", v], converted)
                revenue.add_metric([p, "v1", v], converted * REVENUE_PER_CONVERSION)
                for i, stage in enumerate(c.STAGES):
                    self._histogram(stages, [stage, p, "v1", v], r, scale=1.0 / (1 + i))
        yield from (requests, impressions, clicks, conversions, revenue, cache, stages)
        yield from self._span_metrics(t)
        for name, value in MODEL_QUALITY.items():
            gauge = GaugeMetricFamily(name, "", labels=["model_version", "k"])
            gauge.add_metric(["v1", c.MODEL_K], value)
            yield gauge
        trained = GaugeMetricFamily(c.MODEL_TRAINED, "", labels=["model_version"])
        trained.add_metric(["v1"], self.start - MODEL_AGE_SECONDS)
        yield trained
        yield from self._hop(t)

    def _span_metrics(self, t: float) -> Iterator:
        calls = CounterMetricFamily("traces_span_metrics_calls", "", labels=[
            "service_name", "span_name", "span_kind", "status_code"])
        duration = HistogramMetricFamily("traces_span_metrics_duration_seconds", "", labels=[
            "service_name", "span_name", "span_kind", "status_code"])
        for stage in c.STAGES:
            kind = "SPAN_KIND_SERVER" if stage == c.ROOT_STAGE else "SPAN_KIND_INTERNAL"
            calls.add_metric([c.SERVICE, stage, kind, "STATUS_CODE_UNSET"], 80 * t)
            calls.add_metric([c.SERVICE, stage, kind, c.STATUS_ERROR], 1.6 * t)
            self._histogram(duration, [c.SERVICE, stage, kind, "STATUS_CODE_UNSET"], 80)
        yield from (calls, duration)

    def _hop(self, t: float) -> Iterator:
        def counter(name: str, labels: dict[str, str], per_second: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name.removesuffix("_total"), "", labels=list(labels))
            family.add_metric(list(labels.values()), per_second * t)
            return family

        def gauge(name: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, "", value=value)

        yield counter(c.HOP_RECEIVED, {"signal": "spans"}, 560.0)
        yield counter(c.HOP_REFUSED, {"signal": "spans", "reason": "backpressure"}, 1.0)
        yield counter(c.HOP_EXPORTED, {"signal": "spans"}, 6.0)
        yield counter(c.HOP_EXPORT_FAILED, {"signal": "spans", "reason": "UNAVAILABLE"}, 0.5)
        yield counter(c.HOP_EXPORT_RETRIES, {"signal": "spans"}, 2.0)
        yield counter(c.HOP_STAGE_SECONDS, {"stage": "sampling"}, 0.05)
        yield counter(c.HOP_DECISIONS, {"policy": "errors", "decision": "keep"}, 1.0)
        yield counter(c.HOP_DECISIONS, {"policy": "probabilistic", "decision": "drop"}, 79.0)
        yield counter(c.HOP_DECIDED_EARLY, {"reason": "buffer_full"}, 0.4)
        yield counter(c.HOP_LATE_SPANS, {"decision": "drop"}, 0.3)
        yield counter(c.HOP_SAMPLING_LOGS, {"outcome": "kept"}, 3.0)
        yield counter(c.HOP_REDACTION_RULE_HITS, {"rule": "user_email"}, 80.0)
        yield counter(c.HOP_REDACTION_DETECTOR_HITS, {"detector": "email"}, 80.0)
        yield counter(c.HOP_REDACTION_SPANS, {}, 80.0)
        yield counter(c.HOP_FOLDED, {"metric": "reco_requests_total"}, 0.2)
        yield gauge(c.HOP_QUEUE_BYTES, 4096.0)
        yield gauge(c.HOP_QUEUE_CAPACITY, 64 * 2**20)
        yield gauge(c.HOP_BUFFER_TRACES, 1200.0)
        yield gauge(c.HOP_BUFFER_BYTES, 3 * 2**20)
        active = GaugeMetricFamily(c.HOP_ACTIVE_SERIES, "", labels=["metric"])
        active.add_metric(["reco_requests_total"], 128.0)
        yield active
        latency = HistogramMetricFamily("recohop_sampling_decision_latency_seconds", "", labels=[])
        self._histogram(latency, [], 80.0, scale=100.0)
        yield latency
