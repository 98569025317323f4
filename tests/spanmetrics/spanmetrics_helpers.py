"""Helpers for the span metrics tests: build a stage like the pipeline does, read the registry back as
Prometheus would (OpenMetrics, with exemplars), and the ground truth of a generated recommender workload."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from bench.spanmetrics_workload import Reco
from processor.cardinality.limits import ValueBuckets
from processor.config_node import Node
from processor.stages.base import Stage, StageContext

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RULES = REPO / "collector-config" / "derivations" / "default.yaml"


def build(kind: str, config: dict[str, Any], ctx: StageContext | None = None,
          file: str = "<test hop.yaml>") -> tuple[Stage, StageContext]:
    """Build a stage from its config mapping exactly as `processor.pipeline.build_stage` does."""
    from processor.pipeline import build_stage

    ctx = ctx or StageContext(registry=CollectorRegistry())
    node = Node({"type": kind, **config}, file, "pipeline[0]")
    return build_stage(node, ctx), ctx


@dataclass
class Scrape:
    samples: dict[tuple[str, frozenset], float] = field(default_factory=dict)
    exemplars: list[tuple[str, dict[str, str], dict[str, str]]] = field(default_factory=list)  # name, labels, ex

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def total(self, name: str, **match: str) -> float:
        """Sum over every series of `name` whose labels include `match` (like PromQL sum(name{match}))."""
        return sum(v for (n, labels), v in self.samples.items()
                   if n == name and all((k, val) in labels for k, val in match.items()))

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


def scrape(registry: CollectorRegistry) -> Scrape:
    out = Scrape()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.samples[(s.name, frozenset(s.labels.items()))] = s.value
            if s.exemplar is not None:
                out.exemplars.append((s.name, dict(s.labels), dict(s.exemplar.labels)))
    return out


POSITIONS = ValueBuckets([1, 3, 10])


@dataclass
class Truth:
    """Expected derived values, computed from the generated recommendations."""

    requests: Counter = field(default_factory=Counter)  # (placement, cold_start, error) -> n
    clicks: Counter = field(default_factory=Counter)  # (placement, position bucket) -> n
    impressions: Counter = field(default_factory=Counter)  # (placement, position bucket) -> n
    conversions: Counter = field(default_factory=Counter)  # placement -> n
    revenue: Counter = field(default_factory=Counter)  # placement -> sum
    cache: Counter = field(default_factory=Counter)  # (placement, hit) -> n
    root_ms: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, recos: list[Reco]) -> Truth:
        t = cls()
        for r in recos:
            t.requests[(r.placement, r.cold_start, r.error)] += 1
            t.cache[(r.placement, r.cache_hit)] += 1
            t.root_ms.append(r.root_ms)
            for name, n in POSITIONS.split(r.num_results):
                t.impressions[(r.placement, name)] += n
            for p in r.clicks:
                t.clicks[(r.placement, POSITIONS.label(p))] += 1
            for v in r.revenue:
                t.conversions[r.placement] += 1
                t.revenue[r.placement] += v
        return t
