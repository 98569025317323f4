"""Regressions from a code review: odd numeric attribute values must not poison counters or break flushes."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from processor.config_node import Node
from processor.otlp_values import add_attribute
from processor.signals import REQUEST_TYPES
from processor.stages.base import StageContext
from processor.stages.spanmetrics import DEFAULT_RULES, build


def test_nan_negative_and_huge_values_are_ignored_and_flush_works() -> None:
    registry = CollectorRegistry()
    stage = build(Node({"rules": str(DEFAULT_RULES)}, "<test>"), StageContext(registry=registry))
    request = REQUEST_TYPES["traces"]()
    rs = request.resource_spans.add()
    add_attribute(rs.resource, "service.name", "recommendation-service")
    spans = rs.scope_spans.add().spans
    for i, revenue in enumerate((10.0, math.nan, -5.0, math.inf, 5.0)):
        span = spans.add(trace_id=bytes([i + 1]) * 16, span_id=b"\x01" * 8, name="reco.conversion",
                         start_time_unix_nano=1, end_time_unix_nano=2)
        for key, value in (("reco.placement", "home"), ("reco.model_version", "m1"), ("experiment.variant", "A"),
                           ("reco.revenue", revenue)):
            add_attribute(span, key, value)
    huge = spans.add(trace_id=b"\x09" * 16, span_id=b"\x01" * 8, name="reco.generate",
                     start_time_unix_nano=1, end_time_unix_nano=2)
    for key, value in (("reco.placement", "home"), ("reco.num_results", 2**63 - 1), ("reco.model_version", "m1")):
        add_attribute(huge, key, value)
    stage.on_traces(request)
    revenue = sum(s.value for f in registry.collect() for s in f.samples if s.name == "reco_revenue_total")
    assert revenue == 15.0
    flushed = stage.flush(0.0)  # must not raise
    assert flushed is None or flushed.metrics
