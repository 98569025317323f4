"""Cardinality limits on OTLP metrics passing through: rewrite each metric's data points so forbidden and
non-allowlisted attributes are gone, bucketed attributes hold their bucket, and series beyond the limit fold
into one overflow point (`otel.metric.overflow=true`).

Points that end up with the same attributes are merged: sums add, explicit-bucket histograms with equal bounds
add, gauges keep the latest point. Exponential histograms and summaries cannot be merged: the first point is
kept and the others are counted as folded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from processor.cardinality.limits import (
    OTHER,
    OVERFLOW_ATTRIBUTE,
    CardinalitySelfMetrics,
    ForbiddenKeys,
    MetricLimits,
    SeriesLimiter,
    top_k,
)
from processor.stages.base import MetricsRequest

AttrKey = tuple[tuple[str, bytes], ...]
CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
OVERFLOW_KEY: AttrKey = ((OVERFLOW_ATTRIBUTE, AnyValue(bool_value=True).SerializeToString()),)
_OTHER_VALUE = AnyValue(string_value=OTHER).SerializeToString()


@dataclass
class MetricRule:
    name: str | None
    regex: re.Pattern[str] | None
    limits: MetricLimits

    def matches(self, metric_name: str) -> bool:
        return metric_name == self.name or bool(self.regex and self.regex.search(metric_name))


def _number(value: AnyValue) -> float | None:
    which = value.WhichOneof("value")
    if which == "int_value":
        return float(value.int_value)
    if which == "double_value":
        return value.double_value
    return None


def _volume(field: str, dp: Any) -> float:
    if field in ("sum", "gauge"):
        return dp.as_double if dp.WhichOneof("value") == "as_double" else float(dp.as_int)
    return float(dp.count)


def _merge(field: str, into: Any, other: Any) -> bool:
    """Merge `other` into `into`; False when the two cannot be merged (`other` is dropped)."""
    into.start_time_unix_nano = min(into.start_time_unix_nano, other.start_time_unix_nano) \
        if into.start_time_unix_nano and other.start_time_unix_nano else 0
    if field == "gauge":
        if other.time_unix_nano >= into.time_unix_nano:
            saved = [kv.SerializeToString() for kv in into.attributes]
            into.CopyFrom(other)
            del into.attributes[:]
            for raw in saved:
                into.attributes.add().ParseFromString(raw)
        return True
    into.time_unix_nano = max(into.time_unix_nano, other.time_unix_nano)
    if field == "sum":
        if into.WhichOneof("value") == "as_int" and other.WhichOneof("value") == "as_int" \
                and abs(into.as_int + other.as_int) < 2**63:  # past int64 the sum goes on as a double
            into.as_int += other.as_int
        else:
            into.as_double = _volume("sum", into) + _volume("sum", other)
        into.exemplars.extend(other.exemplars)
        return True
    if field == "histogram" and list(into.explicit_bounds) == list(other.explicit_bounds) \
            and len(into.bucket_counts) == len(other.bucket_counts):
        cap = 2**64 - 1  # uint64 counts saturate rather than fail the request
        merged = [min(a + b, cap) for a, b in zip(into.bucket_counts, other.bucket_counts, strict=True)]
        del into.bucket_counts[:]
        into.bucket_counts.extend(merged)
        into.count = min(into.count + other.count, cap)
        into.sum += other.sum
        if other.HasField("min"):
            into.min = min(into.min, other.min) if into.HasField("min") else other.min
        if other.HasField("max"):
            into.max = max(into.max, other.max) if into.HasField("max") else other.max
        into.exemplars.extend(other.exemplars)
        return True
    return False


def _latest_per_series(points: Any) -> list[Any]:
    """One point per original series: a request may carry two cumulative points of the same series (two
    collection cycles batched together); each is a running total, so only the latest may be merged with other
    series, never added to its own earlier value."""
    latest: dict[tuple[bytes, ...], Any] = {}
    for dp in points:
        series = tuple(sorted(kv.SerializeToString() for kv in dp.attributes))
        seen = latest.get(series)
        if seen is None or dp.time_unix_nano >= seen.time_unix_nano:
            latest[series] = dp
    return list(latest.values())


class MetricsLimiter:
    """Applies per-metric limits to ExportMetricsServiceRequests, in place."""

    def __init__(self, forbidden: ForbiddenKeys, default: MetricLimits, rules: list[MetricRule],
                 self_metrics: CardinalitySelfMetrics) -> None:
        self.forbidden = forbidden
        self.default = default
        self.rules = rules
        self.self_metrics = self_metrics
        self._per_metric: dict[str, tuple[MetricLimits, SeriesLimiter]] = {}

    def _for(self, name: str) -> tuple[MetricLimits, SeriesLimiter]:
        entry = self._per_metric.get(name)
        if entry is None:
            limits = next((r.limits for r in self.rules if r.matches(name)), self.default)
            entry = self._per_metric[name] = (limits, SeriesLimiter(name, limits.series_limit, self.self_metrics))
        return entry

    def apply(self, request: MetricsRequest) -> None:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    field = metric.WhichOneof("data")
                    if field is not None:
                        data = getattr(metric, field)
                        self._metric(metric.name, field, data.data_points,
                                     getattr(data, "aggregation_temporality", CUMULATIVE) == CUMULATIVE)

    def _key(self, dp: Any, limits: MetricLimits) -> tuple[AttrKey, bool]:
        changed = False
        attrs = []
        for kv in dp.attributes:
            k = kv.key
            if k in self.forbidden or (limits.allow is not None and k not in limits.allow):
                changed = True
                continue
            buckets = limits.buckets.get(k)
            if buckets is not None:
                n = _number(kv.value)
                label = OTHER if n is None else buckets.label(n)
                attrs.append((k, AnyValue(string_value=label).SerializeToString()))
                changed = True
            else:
                attrs.append((k, kv.value.SerializeToString()))
        attrs.sort()
        return tuple(attrs), changed

    def _metric(self, name: str, field: str, points: Any, cumulative: bool) -> None:
        if not len(points):
            return
        limits, limiter = self._for(name)
        groups: dict[AttrKey, list[Any]] = {}
        current = _latest_per_series(points) if cumulative and field != "gauge" else list(points)
        changed = len(current) < len(points)
        folded = 0
        for dp in current:
            key, touched = self._key(dp, limits)
            changed |= touched
            if not limiter.admit(key):
                key, changed = OVERFLOW_KEY, True
                folded += 1
            groups.setdefault(key, []).append(dp)
        if limits.top_k is not None and field != "gauge" and len(groups) > limits.top_k:
            volumes = {k: sum(_volume(field, dp) for dp in g) for k, g in groups.items() if k != OVERFLOW_KEY}
            keep = top_k(volumes, limits.top_k)
            for key in [k for k in volumes if k not in keep]:
                other_key = tuple((k, _OTHER_VALUE) for k, _ in key)
                moved = groups.pop(key)
                folded += len(moved)
                groups.setdefault(other_key, []).extend(moved)
            changed = True
        if not changed and len(groups) == len(points):
            return
        rebuilt = []
        for key, group in groups.items():
            merged = type(group[0])()
            merged.CopyFrom(group[0])
            del merged.attributes[:]
            for k, payload in key:
                kv = merged.attributes.add()
                kv.key = k
                kv.value.ParseFromString(payload)
            for dp in group[1:]:
                if not _merge(field, merged, dp):
                    folded += 1
            rebuilt.append(merged)
        del points[:]
        points.extend(rebuilt)
        limiter.folded(folded)
