"""Alert rules as Python values. The thresholds here are also drawn on the matching dashboard panels."""

from __future__ import annotations

from dataclasses import dataclass

from dashboards import contract as c
from dashboards import recording as r

# Thresholds (seed 001: CTR < 5 %, p95 > 500 ms, error rate > 1 %); panels import these.
CTR_MIN = 0.05
CTR_MIN_IMPRESSIONS_PER_SECOND = 0.1  # below this a placement's CTR is noise, not a signal
GENERATE_P95_MAX_SECONDS = 0.5
ERROR_RATIO_MAX = 0.01
FALLBACK_SPIKE_FLOOR = 0.10
COLD_START_SPIKE_FLOOR = 0.20
SPIKE_FACTOR = 2.0
DECIDED_EARLY_RATIO_MAX = 0.01

RUNBOOK = "dashboards/RUNBOOK.md"


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def to_dict(self) -> dict:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{RUNBOOK}#{self.name.lower()}",
            },
        }


def _spike(ratio: str, long_ratio: str, floor: float) -> str:
    """Above an absolute floor AND well above the service's own last hour: a jump, not a steady state."""
    return f"{ratio} > {floor} and {ratio} > {SPIKE_FACTOR} * {long_ratio}"


RECO_ALERTS: list[AlertRule] = [
    AlertRule(
        "RecoLowCTR",
        f"{r.PLACEMENT_CTR} < {CTR_MIN} and {r.PLACEMENT_IMPRESSIONS_RATE} > {CTR_MIN_IMPRESSIONS_PER_SECOND}",
        "15m", "warning",
        "CTR below 5 % on placement {{ $labels.placement }}",
        "Click-through rate on {{ $labels.placement }} is {{ $value | humanizePercentage }} (threshold 5 %).",
    ),
    AlertRule(
        "RecoGenerateP95High",
        f'{r.stage_quantile("p95")}{{stage="{c.ROOT_STAGE}"}} > {GENERATE_P95_MAX_SECONDS}',
        "10m", "critical",
        "p95 of reco.generate above 500 ms",
        "p95 latency of reco.generate is {{ $value | humanizeDuration }} (threshold 500 ms).",
    ),
    AlertRule(
        "RecoErrorRateHigh",
        f"{r.ERROR_RATIO} > {ERROR_RATIO_MAX}",
        "5m", "critical",
        "Recommendation error rate above 1 % on {{ $labels.service_name }}",
        "{{ $value | humanizePercentage }} of reco.generate requests end in error (threshold 1 %).",
    ),
    AlertRule(
        "RecoFallbackSpike",
        _spike(r.FALLBACK_RATIO, r.FALLBACK_RATIO_LONG, FALLBACK_SPIKE_FLOOR),
        "10m", "warning",
        "Popularity fallback spiking on {{ $labels.service_name }}",
        "{{ $value | humanizePercentage }} of requests fell back to popularity, over twice the last hour's share.",
    ),
    AlertRule(
        "RecoColdStartSpike",
        _spike(r.COLD_START_RATIO, r.COLD_START_RATIO_LONG, COLD_START_SPIKE_FLOOR),
        "10m", "warning",
        "Cold-start share spiking on {{ $labels.service_name }}",
        "{{ $value | humanizePercentage }} of requests are cold starts, over twice the last hour's share.",
    ),
]

HOP_ALERTS: list[AlertRule] = [
    AlertRule(
        "RecohopRefusingData",
        f"sum by (instance, signal, reason) (rate({c.HOP_REFUSED}[5m])) > 0",
        "5m", "critical",
        "recohop {{ $labels.instance }} refuses {{ $labels.signal }} ({{ $labels.reason }})",
        "The hop answers senders with refusals: telemetry is being lost upstream.",
    ),
    AlertRule(
        "RecohopExportFailing",
        f"sum by (instance, signal, reason) (rate({c.HOP_EXPORT_FAILED}[5m])) > 0",
        "5m", "critical",
        "recohop {{ $labels.instance }} drops {{ $labels.signal }} on export ({{ $labels.reason }})",
        "Items are dropped after retries: the downstream is unreachable or rejecting data.",
    ),
    AlertRule(
        "RecohopDecidingEarly",
        f"sum by (instance) (rate({c.HOP_DECIDED_EARLY}[5m])) / sum by (instance) (rate({c.HOP_DECISIONS}[5m]))"
        f" > {DECIDED_EARLY_RATIO_MAX}",
        "10m", "warning",
        "recohop {{ $labels.instance }} decides traces early",
        "{{ $value | humanizePercentage }} of sampling decisions are forced before the trace is complete "
        "(buffer pressure): kept traces may miss late spans.",
    ),
]

ALERTS: list[AlertRule] = RECO_ALERTS + HOP_ALERTS


def rule_file() -> dict:
    """The Prometheus rule file (as a mapping) holding every alert."""
    return {
        "groups": [
            {"name": "recohop-recommender-alerts", "rules": [a.to_dict() for a in RECO_ALERTS]},
            {"name": "recohop-hop-alerts", "rules": [a.to_dict() for a in HOP_ALERTS]},
        ]
    }
