"""Cardinality stage: limits the series of OTLP metrics passing through the hop (see
`processor/cardinality/points.py`). Derived span metrics are limited by the spanmetrics stage itself.

```yaml
- type: cardinality
  series_limit: 2000                # per metric name, unless a metrics entry says otherwise
  forbidden_keys: [tenant.user]     # added to the built-in list (user.id, user.email, client.address, ...)
  metrics:
    - name: reco.requests           # or name_regex: "^http\\."
      allow: [reco.placement, reco.model_version]   # only these attribute keys stay
      bucket: {reco.position: [1, 3, 10]}           # values -> 1, 2-3, 4-10, 11+
      series_limit: 100
      top_k: 10                     # per request: the 10 largest series stay, the rest fold into "other"
```
"""

from __future__ import annotations

import re

from processor.cardinality.limits import (
    DEFAULT_FORBIDDEN_KEYS,
    CardinalitySelfMetrics,
    ForbiddenKeys,
    MetricLimits,
    limits_from_node,
)
from processor.cardinality.points import MetricRule, MetricsLimiter
from processor.config_node import Node
from processor.schema import value
from processor.stages.base import MetricsRequest, Stage, StageContext


class CardinalityStage(Stage):
    name = "cardinality"

    def __init__(self, limiter: MetricsLimiter) -> None:
        self.limiter = limiter

    def on_metrics(self, request: MetricsRequest) -> list[MetricsRequest]:
        self.limiter.apply(request)
        return [request]


def build(node: Node, ctx: StageContext) -> Stage:
    forbidden = ForbiddenKeys([*DEFAULT_FORBIDDEN_KEYS, *node.str_list("forbidden_keys")])
    default_limit = node.int("series_limit", value("cardinality.series_limit"), minimum=1)
    rules = []
    for entry in node.children("metrics"):
        name = entry.opt_str("name")
        regex_text = entry.opt_str("name_regex")
        if (name is None) == (regex_text is None):
            raise entry.error("name", "exactly one of name or name_regex")
        try:
            regex = re.compile(regex_text) if regex_text is not None else None
        except re.error as exc:
            raise entry.error("name_regex", f"a valid regular expression ({exc})") from None
        limits = limits_from_node(entry, default_limit)
        for key in sorted(limits.allow or ()):
            if key in forbidden:
                raise entry.error("allow", f"keys that are not forbidden ('{key}' is a forbidden key)")
        entry.done()
        rules.append(MetricRule(name, regex, limits))
    stage = CardinalityStage(MetricsLimiter(forbidden, MetricLimits(series_limit=default_limit), rules,
                                            CardinalitySelfMetrics.of(ctx.registry)))
    stage.name = node.str("name", "cardinality")
    return stage
