"""Recording rules shared by the dashboards and the alerts: CTR per placement and per-stage latency quantiles.

Business counters are pre-aggregated by (placement, variant) so a panel can still filter on both template
variables and re-sum; quantiles are recorded per stage for the alerts and the unfiltered views.

Panels read recorded series only for latency quantiles, which a 5m window gets right even over a shorter
history (a quantile of what was seen so far). Rates and ratios of rates (requests, revenue, CTR, conversion
rate, hop throughput) are drawn from the raw counters over `$__rate_interval`, which fits the range and scrape
interval shown: over a one-minute history a fixed 5m window draws a rate climbing for 5 minutes, and a
conversion rate too low (conversions follow clicks by seconds). The alerts keep the recorded 5m series.
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboards import contract as c
from dashboards.promql import quantile, rate_sum, share

WINDOW = "5m"
LONG_WINDOW = "1h"
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str

    def to_dict(self) -> dict[str, str]:
        return {"record": self.record, "expr": self.expr}


# Series names, referenced by panels and alerts (never spelled out twice).
IMPRESSIONS_RATE = "placement_variant:reco_impressions:rate5m"
CLICKS_RATE = "placement_variant:reco_clicks:rate5m"
PLACEMENT_IMPRESSIONS_RATE = "placement:reco_impressions:rate5m"
PLACEMENT_CTR = "placement:reco_ctr:ratio5m"
STAGE_BUCKET_RATE = "stage_placement_variant:reco_stage_duration_seconds_bucket:rate5m"
ERROR_RATIO = "service:reco_requests_errors:ratio5m"
FALLBACK_RATIO = "service:reco_requests_fallback:ratio5m"
FALLBACK_RATIO_LONG = "service:reco_requests_fallback:ratio1h"
COLD_START_RATIO = "service:reco_requests_cold_start:ratio5m"
COLD_START_RATIO_LONG = "service:reco_requests_cold_start:ratio1h"


def stage_quantile(name: str) -> str:
    """Recorded series name of a per-stage quantile, e.g. `stage:reco_stage_duration_seconds:p95_5m`."""
    return f"stage:reco_stage_duration_seconds:{name}_{WINDOW}"


def _rules() -> list[RecordingRule]:
    pv = ("placement", "variant")
    svc = ("service_name",)
    rules = [
        RecordingRule(IMPRESSIONS_RATE, rate_sum(c.IMPRESSIONS, WINDOW, pv)),
        RecordingRule(CLICKS_RATE, rate_sum(c.CLICKS, WINDOW, pv)),
        RecordingRule(PLACEMENT_IMPRESSIONS_RATE, f"sum by (placement) ({IMPRESSIONS_RATE})"),
        RecordingRule(PLACEMENT_CTR, f"sum by (placement) ({CLICKS_RATE}) / sum by (placement) ({IMPRESSIONS_RATE})"),
        RecordingRule(STAGE_BUCKET_RATE, rate_sum(c.STAGE_DURATION_BUCKET, WINDOW, ("stage", *pv, "le"))),
    ]
    rules += [RecordingRule(stage_quantile(n), quantile(q, STAGE_BUCKET_RATE, ("stage",))) for n, q in QUANTILES.items()]
    rules += [
        RecordingRule(ERROR_RATIO, share(c.REQUESTS, f'status_code="{c.STATUS_ERROR}"', WINDOW, svc)),
        RecordingRule(FALLBACK_RATIO, share(c.REQUESTS, 'fallback="true"', WINDOW, svc)),
        RecordingRule(FALLBACK_RATIO_LONG, share(c.REQUESTS, 'fallback="true"', LONG_WINDOW, svc)),
        RecordingRule(COLD_START_RATIO, share(c.REQUESTS, 'cold_start="true"', WINDOW, svc)),
        RecordingRule(COLD_START_RATIO_LONG, share(c.REQUESTS, 'cold_start="true"', LONG_WINDOW, svc)),
    ]
    return rules


RULES: list[RecordingRule] = _rules()


def rule_file() -> dict:
    """The Prometheus rule file (as a mapping) holding every recording rule."""
    return {"groups": [{"name": "recohop-recording", "rules": [r.to_dict() for r in RULES]}]}
