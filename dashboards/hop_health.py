"""Hop health: what recohop receives, keeps, redacts, folds and exports, and where it hurts."""

from __future__ import annotations

from grafanalib import core as g

from dashboards import alerts as a
from dashboards import contract as c
from dashboards.panels import (
    RATE,
    THIRD,
    dashboard,
    datasource_var,
    layout,
    query_var,
    targets,
    timeseries,
    upper_limit,
)
from dashboards.promql import quantile, selector

UID = "recohop-hop-health"
TITLE = "recohop hop health"

INSTANCE = 'instance=~"$instance"'


def _rate(metric: str, labels: str, *matchers: str) -> str:
    return f"sum by ({labels}) (rate({selector(metric, INSTANCE, *matchers)}[{RATE}]))"


def _gauge(metric: str, labels: str) -> str:
    return f"sum by ({labels}) ({selector(metric, INSTANCE)})"


def _throughput() -> list[g.Panel]:
    return [
        timeseries("Items in by signal", targets((_rate(c.HOP_RECEIVED, "signal"), "{{signal}}")), "cps", w=THIRD,
                   description="Spans, metric points and log records accepted from senders."),
        timeseries("Items out by signal", targets((_rate(c.HOP_EXPORTED, "signal"), "{{signal}}")), "cps", w=THIRD,
                   description="Items delivered downstream (after sampling)."),
        timeseries("Items refused or failed", targets(
            (_rate(c.HOP_REFUSED, "signal, reason"), "refused {{signal}} {{reason}}"),
            (_rate(c.HOP_EXPORT_FAILED, "signal, reason"), "export failed {{signal}} {{reason}}"),
        ), "cps", thresholds=upper_limit(0.001), w=THIRD, description="Any sustained value here pages (data loss)."),
        timeseries("Pipeline stage CPU time", targets((_rate(c.HOP_STAGE_SECONDS, "stage"), "{{stage}}")),
                   "percentunit", stacked=True, w=THIRD, description="Seconds spent per second in each stage."),
        timeseries("Exporter queue", targets(
            (_gauge(c.HOP_QUEUE_BYTES, "instance"), "queued {{instance}}"),
            (_gauge(c.HOP_QUEUE_CAPACITY, "instance"), "capacity {{instance}}"),
        ), "bytes", w=THIRD),
        timeseries("Export retries", targets((_rate(c.HOP_EXPORT_RETRIES, "signal"), "{{signal}}")), "cps", w=THIRD),
    ]


def _sampling() -> list[g.Panel]:
    latency = f"rate({selector(c.HOP_DECISION_LATENCY_BUCKET, INSTANCE)}[{RATE}])"
    decisions = selector(c.HOP_DECISIONS, INSTANCE)
    early_ratio = (f"sum (rate({selector(c.HOP_DECIDED_EARLY, INSTANCE)}[{RATE}])) / "
                   f"sum (rate({decisions}[{RATE}]))")
    return [
        timeseries("Traces kept by policy", targets((_rate(c.HOP_DECISIONS, "policy", 'decision="keep"'),
                                                     "{{policy}}")), "cps", stacked=True, w=THIRD),
        timeseries("Traces dropped by policy", targets((_rate(c.HOP_DECISIONS, "policy", 'decision="drop"'),
                                                        "{{policy}}")), "cps", stacked=True, w=THIRD),
        timeseries("Decided early by reason", targets((_rate(c.HOP_DECIDED_EARLY, "reason"), "{{reason}}")), "cps",
                   w=THIRD, description="Decisions forced before the trace was complete (buffer pressure)."),
        timeseries("Decided early share", targets((early_ratio, "share of decisions")), "percentunit",
                   thresholds=upper_limit(a.DECIDED_EARLY_RATIO_MAX), w=THIRD,
                   description=f"Alert when above {a.DECIDED_EARLY_RATIO_MAX:.0%} of decisions."),
        timeseries("Late spans", targets((_rate(c.HOP_LATE_SPANS, "decision"), "{{decision}}")), "cps", w=THIRD,
                   description="Spans arriving after their trace was decided."),
        timeseries("Sampling buffer traces", targets((_gauge(c.HOP_BUFFER_TRACES, "instance"), "{{instance}}")),
                   "short", w=THIRD),
        timeseries("Sampling buffer bytes", targets((_gauge(c.HOP_BUFFER_BYTES, "instance"), "{{instance}}")),
                   "bytes", w=THIRD),
        timeseries("Decision latency", targets(*[(quantile(q, latency), name) for name, q in
                                                 (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))]), "s", w=THIRD,
                   description="From a trace's first span to its keep/drop decision."),
        timeseries("Sampled logs", targets((_rate(c.HOP_SAMPLING_LOGS, "outcome"), "{{outcome}}")), "cps", w=THIRD),
    ]


def _redaction_cardinality() -> list[g.Panel]:
    return [
        timeseries("Redactions per rule", targets((_rate(c.HOP_REDACTION_RULE_HITS, "rule"), "{{rule}}")), "cps",
                   w=THIRD),
        timeseries("Redactions per detector", targets((_rate(c.HOP_REDACTION_DETECTOR_HITS, "detector"),
                                                       "{{detector}}"),
                                                      (_rate(c.HOP_REDACTION_SPANS, "instance"), "spans touched")),
                   "cps", w=THIRD),
        timeseries("Series folded by cardinality control", targets((_rate(c.HOP_FOLDED, "metric"), "{{metric}}")),
                   "cps", w=THIRD),
        timeseries("Active derived series", targets((_gauge(c.HOP_ACTIVE_SERIES, "metric"), "{{metric}}")),
                   "short", w=THIRD),
    ]


def build() -> g.Dashboard:
    panels = layout([
        ("Throughput and export", _throughput()),
        ("Tail sampling", _sampling()),
        ("Redaction and cardinality", _redaction_cardinality()),
    ])
    variables = [
        datasource_var(),
        query_var("instance", "Hop instance", f"label_values({c.HOP_RECEIVED}, instance)"),
    ]
    links = [g.DashboardLink(title="Recommender overview", type="dashboards", tags=["recohop"], keepTime=True)]
    return dashboard(TITLE, UID, "The recohop pipeline hop's own telemetry.", variables, panels, links)
