"""Per-metric cardinality limits, shared by span metrics (derived series) and the `cardinality` stage (OTLP
metrics passing through).

A series is a tuple of label values. Limits decide, once per new series, whether it is admitted; series that
come after the limit fold into one overflow series (`otel_metric_overflow="true"`, the OTel SDK convention),
so totals stay exact while the number of series stays bounded.
"""

from __future__ import annotations

import bisect
import re
import weakref
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from processor.config_node import ConfigError, Node
from processor.redaction.labels import redact_label
from processor.schema import value

OVERFLOW_LABEL = "otel_metric_overflow"  # Prometheus label of the overflow series
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"  # the same, as an OTLP attribute
OTHER = "other"  # label value of the series that top-K folds the long tail into

# Keys that identify a person or a single request: never a label, whatever a rule or an SDK says.
DEFAULT_FORBIDDEN_KEYS = (
    "user.id", "user.email", "user.name", "enduser.id", "client.address", "client.ip", "http.client_ip",
    "net.peer.ip", "session.id", "reco.search_query", "reco.request_id",
)


def normal_key(key: str) -> str:
    """`user.id`, `user_id` and `User-Id` name the same thing; compare keys in this form."""
    return re.sub(r"[^a-z0-9]", "_", key.lower())


class ForbiddenKeys:
    """The set of attribute keys that must never become labels (compared in normal form)."""

    _MEMO_LIMIT = 4096  # distinct keys remembered; attribute keys repeat, their normal form need not be redone

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = frozenset(normal_key(k) for k in keys)
        self._memo: dict[str, bool] = {}

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= self._MEMO_LIMIT:
                self._memo.clear()
            hit = self._memo[key] = normal_key(key) in self.keys
        return hit


class ValueBuckets:
    """Integer bounds such as [1, 3, 10] -> labels `1`, `2-3`, `4-10`, `11+` (a value v goes to the first
    bucket whose upper bound is >= v)."""

    def __init__(self, bounds: list[int]) -> None:
        self.bounds = bounds
        self.names: list[str] = []
        self.ranges: list[tuple[int, float]] = []
        low = 1
        for bound in bounds:
            self.names.append(str(bound) if bound <= low else f"{low}-{bound}")
            self.ranges.append((low, bound))
            low = bound + 1
        self.names.append(f"{low}+")
        self.ranges.append((low, float("inf")))

    @classmethod
    def from_node(cls, node: Node, key: str) -> ValueBuckets:
        bounds = node.list(key)
        if not bounds or any(isinstance(b, bool) or not isinstance(b, int) for b in bounds) \
                or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)) or bounds[0] < 1:
            raise node.error(key, "a non-empty, strictly increasing list of integers >= 1 such as [1, 3, 10]",
                             bounds)
        return cls(bounds)

    def label(self, value: float) -> str:
        return self.names[bisect.bisect_left(self.bounds, value)]

    def split(self, count: int) -> list[tuple[str, int]]:
        """Positions 1..count spread over the buckets: e.g. 12 results -> 1:1, 2-3:2, 4-10:7, 11+:2."""
        out = []
        for name, (low, high) in zip(self.names, self.ranges, strict=True):
            n = int(min(count, high)) - low + 1
            if n > 0:
                out.append((name, n))
        return out


@dataclass
class MetricLimits:
    """What one metric may look like: allowed label keys (None: any not forbidden), bucketed keys, limits."""

    allow: frozenset[str] | None = None
    buckets: dict[str, ValueBuckets] = field(default_factory=dict)
    series_limit: int = value("cardinality.series_limit")
    top_k: int | None = None


def limits_from_node(node: Node, default_limit: int) -> MetricLimits:
    """Reads `allow`, `bucket`, `series_limit`, `top_k` from a mapping (a metric entry or a derivation rule)."""
    allow = frozenset(node.str_list("allow")) if node.has("allow") else None
    buckets: dict[str, ValueBuckets] = {}
    if node.has("bucket"):
        bucket_node = node.child("bucket")
        for key in list(bucket_node.data):
            buckets[key] = ValueBuckets.from_node(bucket_node, key)
        bucket_node.done()
    top_k = node.int("top_k", minimum=1) if node.has("top_k") else None
    return MetricLimits(allow, buckets, node.int("series_limit", default_limit, minimum=1), top_k)


class CardinalitySelfMetrics:
    """`recohop_cardinality_active_series{metric}` and `recohop_cardinality_folded_total{metric}`, created once
    per registry (span metrics and the cardinality stage share them)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, CardinalitySelfMetrics] = \
        weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge("recohop_cardinality_active_series", "Series admitted per metric (overflow included)",
                            ["metric"], registry=registry)
        self.folded = Counter("recohop_cardinality_folded", "Measurements folded into an overflow or `other` "
                              "series, per metric", ["metric"], registry=registry)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> CardinalitySelfMetrics:
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics


class SeriesLimiter:
    """Admits up to `limit` distinct series of one metric; `admit` says whether a new series may exist.

    Admission is sticky (an admitted series stays admitted), so cumulative series never jump between their own
    series and the overflow series.
    """

    def __init__(self, metric: str, limit: int, self_metrics: CardinalitySelfMetrics) -> None:
        self.metric = metric
        self.limit = limit
        self.admitted: set[Hashable] = set()
        label = redact_label(metric)  # a metric name holding PII must not reach /metrics as a label
        self._active = self_metrics.active.labels(label)
        self._folded = self_metrics.folded.labels(label)
        self._overflow_used = False

    def admit(self, key: Hashable) -> bool:
        if key in self.admitted:
            return True
        if len(self.admitted) < self.limit:
            self.admitted.add(key)
            self._publish()
            return True
        return False

    def folded(self, measurements: int) -> None:
        """Count measurements that went to the overflow (or `other`) series."""
        if measurements:
            if not self._overflow_used:
                self._overflow_used = True
                self._publish()
            self._folded.inc(measurements)

    def _publish(self) -> None:
        self._active.set(len(self.admitted) + (1 if self._overflow_used else 0))


def top_k(volumes: dict[Hashable, float], k: int) -> set[Hashable]:
    """The k series with the largest volume (ties broken by key order, so the choice is stable)."""
    if len(volumes) <= k:
        return set(volumes)
    ranked = sorted(volumes.items(), key=lambda kv: (-kv[1], repr(kv[0])))
    return {key for key, _ in ranked[:k]}


def check_label_key(forbidden: ForbiddenKeys, node: Node, key: str, attribute: str) -> None:
    """Config-time guard: a rule may not turn a forbidden attribute into a label."""
    if attribute in forbidden:
        raise ConfigError(node.file, node.key_path(key),
                          f"an attribute that may become a label ('{attribute}' is a forbidden key: it "
                          "identifies a person or a request)")
