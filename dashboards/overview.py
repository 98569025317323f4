"""Recommender overview: latency by stage, traffic and errors, business outcomes by placement, A/B, model quality."""

from __future__ import annotations

import re

from grafanalib import core as g

from dashboards import alerts as a
from dashboards import contract as c
from dashboards import recording as r
from dashboards.panels import (
    FULL,
    QUARTER,
    RATE,
    THIRD,
    dashboard,
    datasource_var,
    gauge,
    layout,
    lower_limit,
    query_var,
    steps,
    targets,
    timeseries,
    upper_limit,
)
from dashboards.promql import quantile, selector, share

UID = "recohop-reco-overview"
TITLE = "Recommender overview"

SERVICE = 'service_name=~"$service"'
PLACEMENT = 'placement=~"$placement"'
VARIANT = 'variant=~"$variant"'


def _ratio(numerator: str, denominator: str, labels: str) -> str:
    """Two counters' rates over `$__rate_interval` under the dashboard filters, summed by `labels`, divided.

    Not the recorded 5m rates (the alerts use those): conversions follow clicks by seconds, so over a history
    shorter than the window a 5m ratio climbs for minutes towards the true value; a window that fits the
    range shown reads true after one window."""
    num = f"sum by ({labels}) (rate({selector(numerator, PLACEMENT, VARIANT)}[{RATE}]))"
    den = f"sum by ({labels}) (rate({selector(denominator, PLACEMENT, VARIANT)}[{RATE}]))"
    return f"{num} / {den}"


def _recorded_stage_quantile(q: float, stage_matcher: str, labels: tuple[str, ...]) -> str:
    return quantile(q, selector(r.STAGE_BUCKET_RATE, stage_matcher, PLACEMENT, VARIANT), labels)


def _stage_panel(stage: str) -> g.TimeSeries:
    """p50/p95/p99 of one span from the raw histogram, with exemplars (trace links) of kept traces."""
    stage_matcher = f'stage="{stage}"'
    buckets = f"rate({selector(c.STAGE_DURATION_BUCKET, stage_matcher, PLACEMENT, VARIANT)}[{RATE}])"
    queries = targets(*[(quantile(q, buckets), name) for name, q in r.QUANTILES.items()], exemplar=True)
    limit = upper_limit(a.GENERATE_P95_MAX_SECONDS) if stage == c.ROOT_STAGE else None
    return timeseries(f"{stage} latency", queries, "s", thresholds=limit, w=THIRD,
                      description=f"Quantiles of the `{stage}` span; dots are exemplars linking to kept traces.")


def _latency() -> list[g.Panel]:
    alternatives = "|".join(re.escape(s).replace("\\", "\\\\") for s in c.CHILD_STAGES)  # PromQL string escaping
    children = f'stage=~"{alternatives}"'
    stacked = timeseries(
        "Latency breakdown by stage (p95, stacked)",
        targets((_recorded_stage_quantile(0.95, children, ("stage",)), "{{stage}}")), "s", stacked=True, w=FULL,
        description="p95 of each direct child of reco.generate, stacked: where a slow request spends its time.",
    )
    quantiles = timeseries(
        "Stage latency p50 / p95 / p99 (all traffic)",
        targets(*[(r.stage_quantile(name), f"{{{{stage}}}} {name}") for name in r.QUANTILES]),
        "s", w=FULL, thresholds=upper_limit(a.GENERATE_P95_MAX_SECONDS),
        description="The recorded per-stage quantiles the latency alert evaluates; ignores the placement and "
                    "variant filters.",
    )
    return [stacked, quantiles, *[_stage_panel(s) for s in c.STAGES]]


def _traffic() -> list[g.Panel]:
    requests = selector(c.REQUESTS, SERVICE, PLACEMENT, VARIANT)
    return [
        timeseries("Request rate by placement",
                   targets((f"sum by (placement) (rate({requests}[{RATE}]))", "{{placement}}")), "reqps", w=THIRD),
        timeseries("Error rate",
                   targets((share(c.REQUESTS, f'status_code="{c.STATUS_ERROR}"', RATE, (), SERVICE, PLACEMENT,
                                  VARIANT), "errors")),
                   "percentunit", thresholds=upper_limit(a.ERROR_RATIO_MAX), w=THIRD,
                   description="Share of reco.generate spans with status ERROR (alert above 1 %)."),
        timeseries("Span calls by span name",
                   targets((f"sum by (span_name, status_code) (rate({selector(c.SPAN_CALLS, SERVICE)}[{RATE}]))",
                            "{{span_name}} {{status_code}}")), "reqps", w=THIRD,
                   description="Generic span metrics (spanmetrics-connector names) for every span of the service."),
    ]


def _business() -> list[g.Panel]:
    return [
        timeseries("CTR by placement", targets((_ratio(c.CLICKS, c.IMPRESSIONS, "placement"),
                                                "{{placement}}")),
                   "percentunit", thresholds=lower_limit(a.CTR_MIN), w=THIRD,
                   description="Clicks / impressions (the alert, on recorded 5m rates, fires below 5 %)."),
        timeseries("Conversion rate by placement", targets((_ratio(c.CONVERSIONS, c.CLICKS, "placement"),
                                                            "{{placement}}")),
                   "percentunit", w=THIRD, description="Conversions / clicks."),
        timeseries("Revenue by placement",
                   targets((f"sum by (placement) (rate({selector(c.REVENUE, PLACEMENT, VARIANT)}[{RATE}])) * 3600",
                            "{{placement}}")), "short", w=THIRD, description="Attributed revenue per hour."),
        timeseries("Cold-start rate",
                   targets((share(c.REQUESTS, 'cold_start="true"', RATE, (), SERVICE, PLACEMENT, VARIANT),
                            "cold start")), "percentunit", thresholds=upper_limit(a.COLD_START_SPIKE_FLOOR),
                   w=THIRD, description="Requests for users without history (alert on a spike above 20 %)."),
        timeseries("Fallback rate",
                   targets((share(c.REQUESTS, 'fallback="true"', RATE, (), SERVICE, PLACEMENT, VARIANT),
                            "fallback")), "percentunit", thresholds=upper_limit(a.FALLBACK_SPIKE_FLOOR),
                   w=THIRD, description="Requests answered by the popularity fallback (alert on a spike above 10 %)."),
        timeseries("Embedding cache hit rate",
                   targets((share(c.CACHE_LOOKUPS, 'cache_hit="true"', RATE, ("placement",), PLACEMENT),
                            "{{placement}}")), "percentunit", w=THIRD),
    ]


def _ab() -> list[g.Panel]:
    generate = 'stage="reco.generate"'
    return [
        timeseries("A/B CTR by variant", targets((_ratio(c.CLICKS, c.IMPRESSIONS, "variant"),
                                                  "{{variant}}")),
                   "percentunit", thresholds=lower_limit(a.CTR_MIN), w=THIRD),
        timeseries("A/B conversion rate by variant",
                   targets((_ratio(c.CONVERSIONS, c.CLICKS, "variant"), "{{variant}}")),
                   "percentunit", w=THIRD),
        timeseries("A/B reco.generate p95 by variant",
                   targets((_recorded_stage_quantile(0.95, generate, ("variant",)), "{{variant}}")), "s",
                   thresholds=upper_limit(a.GENERATE_P95_MAX_SECONDS), w=THIRD),
    ]


def _model_quality() -> list[g.Panel]:
    """What the recommendation service reports for the model versions it has loaded (its own /metrics)."""
    good = steps("red", (0.2, "yellow"), (0.4, "green"))
    k = f'k="{c.MODEL_K}"'
    gauges = [
        gauge(title, targets((f"max by (model_version) ({selector(metric, k)})", "{{model_version}}"),
                             instant=True),
              "percentunit", thresholds=good, description=text, w=QUARTER)
        for title, metric, text in (
            ("Model NDCG@10", c.MODEL_NDCG, "Offline NDCG@10 (held-out split) of each model version the service "
                                            "has loaded."),
            ("Model catalogue coverage", c.MODEL_COVERAGE, "Share of the catalogue in any offline top-10 list."),
            ("Model diversity", c.MODEL_DIVERSITY, "Intra-list diversity (share of category-distinct pairs)."),
        )
    ]
    age = timeseries("Model age since training",
                     targets((f"time() - max by (model_version) ({c.MODEL_TRAINED})", "{{model_version}}")),
                     "s", w=QUARTER, h=6,
                     description="Staleness of the serving weights: time since each loaded version was trained.")
    return [*gauges, age]


def build(trace_datasource_uid: str = "tempo") -> g.Dashboard:
    panels = layout([
        ("Latency", _latency()),
        ("Traffic and errors", _traffic()),
        ("Business outcomes by placement", _business()),
        ("A/B comparison", _ab()),
        ("Model quality (served versions, offline evaluation)", _model_quality()),
    ])
    variables = [
        datasource_var(),
        query_var("service", "Service", f"label_values({c.REQUESTS}, service_name)"),
        query_var("placement", "Placement", f"label_values({c.REQUESTS}, placement)"),
        query_var("variant", "Variant", f"label_values({c.REQUESTS}, variant)"),
    ]
    links = [
        g.DashboardLink(title="Hop health", type="dashboards", tags=["recohop"], asDropdown=False, keepTime=True),
        g.DashboardLink(title="Traces", type="link", icon="external link", keepTime=True,
                        uri=f'/explore?left={{"datasource":"{trace_datasource_uid}"}}',
                        tooltip="Open the trace datasource in Explore"),
    ]
    return dashboard(TITLE, UID, "Recommendation service: latency, outcomes and experiments (recohop).",
                     variables, panels, links)
