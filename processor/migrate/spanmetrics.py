"""otelcol's spanmetrics connector (v0.158) -> a recohop derivation file and the spanmetrics stage's settings.

The connector makes `<namespace>.calls` (a counter) and `<namespace>.duration` (a histogram) per service, span
name, span kind and status code, plus the configured dimensions. recohop's built-in RED metrics have those four
labels only, so the import writes both metrics as derivation rules over every span, with the dimensions as
labels, and turns the stage's own RED metrics off (`red: false`). Names are what otelcol's Prometheus exporter
shows (`traces_span_metrics_calls_total`, `..._duration_seconds`); durations are in seconds in recohop.

A dimension is looked up by otelcol in the span's attributes, then the resource's; a recohop label reads one
place, chosen here by the key (resource semantic-convention namespaces -> resource, else span) and noted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from processor.cardinality.limits import DEFAULT_FORBIDDEN_KEYS, ForbiddenKeys
from processor.migrate.source import Component, Findings, Refused, Section, go_duration_ns, seconds_text
from processor.stages.spanmetrics import DEFAULT_BUCKETS

DEFAULT_DIMENSIONS = {  # otelcol dimension -> (Prometheus label, recohop label source)
    "service.name": ("service_name", {"resource": "service.name"}),
    "span.name": ("span_name", {"span": "name"}),
    "span.kind": ("span_kind", {"span": "kind"}),
    "status.code": ("status_code", {"span": "status_code"}),
}
RESOURCE_NAMESPACES = ("service.", "deployment.", "host.", "k8s.", "cloud.", "container.", "process.",
                       "telemetry.", "os.", "faas.", "device.", "webengine.")
RESERVED_LABELS = {"le", "quantile", "otel_metric_overflow"}


@dataclass
class ImportedSpanMetrics:
    rules: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    stage: dict[str, Any] = field(default_factory=dict)


def prometheus_name(name: str) -> str:
    """What otelcol's Prometheus exporter makes of a metric or label name: invalid characters become `_`."""
    clean = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return f"key_{clean}" if clean[:1].isdigit() else clean


class _Labels:
    def __init__(self, findings: Findings, forbidden: ForbiddenKeys) -> None:
        self.findings = findings
        self.forbidden = forbidden

    def dimensions(self, sec: Section, key: str) -> dict[str, dict[str, Any]]:
        labels: dict[str, dict[str, Any]] = {}
        for dim in sec.sections(key):
            if dim.has("glob"):
                dim.get("glob")
                raise Refused(dim.at("glob"), "recohop labels are named one by one; a glob over attribute keys "
                                              "would need a label source by pattern")
            name = dim.str("name")
            if not name:
                raise Refused(dim.at("name"), "a dimension needs a name")
            if name in self.forbidden:
                raise Refused(dim.at("name"), f"recohop refuses '{name}' as a label: it identifies a person or a "
                                              "request (a forbidden key); one series per value is also what a "
                                              "cardinality limit is for")
            label = prometheus_name(name)
            if label in RESERVED_LABELS or label.startswith("__"):
                raise Refused(dim.at("name"), f"'{label}' is a reserved Prometheus label name")
            resource = name.startswith(RESOURCE_NAMESPACES)
            spec: dict[str, Any] = {"resource" if resource else "attribute": name}
            self.findings.note(dim.at("name"), f"label {label} reads the {'resource' if resource else 'span'} "
                                               f"attribute {name} only; otelcol reads the span's, else the "
                                               "resource's")
            if dim.has("default"):
                default = dim.get("default")
                spec["default"] = default if isinstance(default, str) else str(default)
            dim.refuse_leftover("spanmetrics dimension")
            labels[label] = spec
        return labels


def _buckets(hist: Section) -> list[float]:
    explicit = hist.section("explicit")
    if not hist.has("explicit"):
        return list(DEFAULT_BUCKETS)
    raw = explicit.get("buckets", [])
    explicit.refuse_leftover("spanmetrics histogram.explicit")
    if not isinstance(raw, list) or not raw:
        raise Refused(explicit.at("buckets"), "no bucket bounds (recohop histograms need at least one)")
    seconds = []
    for i, value in enumerate(raw):
        ns = go_duration_ns(value)
        if ns is None or ns <= 0:
            raise Refused(f"{explicit.at('buckets')}[{i}]", f"expected a positive duration such as 100ms, got "
                                                            f"{value!r}")
        seconds.append(ns / 1e9)
    if any(b <= a for a, b in zip(seconds, seconds[1:], strict=False)):
        raise Refused(explicit.at("buckets"), "bounds must increase (recohop refuses unordered buckets)")
    return seconds


def translate(component: Component, findings: Findings) -> ImportedSpanMetrics | None:
    """The derivation rules and stage settings for one spanmetrics connector; refusals go to `findings`."""
    before = len(findings.refused)
    out = ImportedSpanMetrics()

    attempt = findings.attempt
    sec = findings.section(component)
    if sec is None:
        return None
    labeler = _Labels(findings, ForbiddenKeys(DEFAULT_FORBIDDEN_KEYS))
    namespace = attempt(lambda: sec.str("namespace", "traces.span.metrics"), "traces.span.metrics")
    dims = attempt(lambda: labeler.dimensions(sec, "dimensions"), {})
    calls_dims = attempt(lambda: labeler.dimensions(sec, "calls_dimensions"), {})
    excluded = attempt(lambda: sec.str_list("exclude_dimensions"), [])
    hist = attempt(lambda: sec.section("histogram"))
    hist_dims: dict[str, Any] = {}
    buckets: list[float] = list(DEFAULT_BUCKETS)
    histogram = True
    unit = "ms"
    if hist is not None:
        histogram = not attempt(lambda: hist.bool("disable"), False)
        unit = attempt(lambda: hist.str("unit", "ms"), "ms")
        if unit not in ("ms", "s"):
            findings.refuse(Refused(hist.at("unit"), f"'{unit}' is not ms or s"))
        if hist.has("exponential"):
            hist.get("exponential")
            findings.refuse(Refused(hist.at("exponential"), "recohop histograms have explicit buckets only (give "
                                                            "histogram.explicit.buckets)"))
        buckets = attempt(lambda: _buckets(hist), buckets)
        hist_dims = attempt(lambda: labeler.dimensions(hist, "dimensions"), {})
        for key in hist.leftover():
            findings.refuse(Refused(hist.at(key), "not a setting of otelcol v0.158's spanmetrics histogram"))

    temporality = attempt(lambda: sec.str("aggregation_temporality", "AGGREGATION_TEMPORALITY_CUMULATIVE"), "")
    if temporality == "AGGREGATION_TEMPORALITY_DELTA":
        findings.refuse(Refused(sec.at("aggregation_temporality"), "recohop sends cumulative metrics only"))
    events = attempt(lambda: sec.section("events"))
    if events is not None:
        if attempt(lambda: events.bool("enabled"), False):
            findings.refuse(Refused(events.at("enabled"), "recohop derives no metrics from span events (an "
                                                          "`events` rule kind would be needed)"))
        events.read.update(events.data)
    for key, why in (("include_instrumentation_scope", "recohop labels have no instrumentation-scope source"),
                     ("add_resource_attributes", "recohop's derived metrics carry only the labels a rule names"),
                     ("enable_metrics_sampling_method", "recohop counts each span once; it does not extrapolate "
                                                        "from a tracestate sampling threshold")):
        if attempt(lambda key=key: sec.get(key)):
            findings.refuse(Refused(sec.at(key), why))
    for key, text in (
            ("dimensions_cache_size", "a cache size; recohop needs none"),
            ("resource_metrics_cache_size", "a cache size; recohop needs none"),
            ("metric_timestamp_cache_size", "a delta-temporality cache; recohop is cumulative"),
            ("resource_metrics_key_attributes", "recohop exposes series by their labels, not grouped by resource"),
            ("metrics_expiration", "recohop keeps a series until restart; series_limit bounds how many there are"),
            ("series_expiration", "recohop keeps a series until restart; series_limit bounds how many there are")):
        if sec.has(key):
            sec.get(key)
            findings.note(sec.at(key), text)

    exemplars = attempt(lambda: sec.section("exemplars"))
    exemplars_on = False
    if exemplars is not None:
        exemplars_on = attempt(lambda: exemplars.bool("enabled"), False)
        if exemplars.has("max_per_data_point"):
            exemplars.get("max_per_data_point")
            findings.note(exemplars.at("max_per_data_point"), "recohop keeps up to exemplars.per_bucket (4) per "
                                                              "histogram bucket")
        for key in exemplars.leftover():
            findings.refuse(Refused(exemplars.at(key), "not a setting of otelcol v0.158's spanmetrics exemplars"))
    if exemplars_on:
        findings.note(sec.at("exemplars"), "recohop attaches exemplars only for traces its tail sampling keeps")
    flush_ns = attempt(lambda: sec.duration_ns("metrics_flush_interval", 60 * 10**9), 60 * 10**9)
    limit = attempt(lambda: sec.int("aggregation_cardinality_limit"), 0)
    for key in sec.leftover():
        findings.refuse(Refused(sec.at(key), "not a setting of otelcol v0.158's spanmetrics connector"))
    if findings.refused[before:]:
        return None

    base: dict[str, Any] = {}
    for dimension, (label, source) in DEFAULT_DIMENSIONS.items():
        if dimension not in excluded:
            base[label] = source
    if "collector.instance.id" not in excluded:
        findings.note(sec.path, "otelcol v0.158 adds collector.instance.id (its own instance id) to every series; "
                                "recohop's series have no such label (the Prometheus scrape adds `instance`)")
    for name in excluded:
        if name not in DEFAULT_DIMENSIONS and name != "collector.instance.id":
            findings.note(sec.at("exclude_dimensions"), f"'{name}' is not a default dimension; nothing to exclude")
    prefix = prometheus_name(namespace) + "_" if namespace else ""
    everything = {"spans_regex": ""}  # every span, as the connector counts
    out.rules.append({"name": f"{prefix}calls_total", "kind": "counter",
                      "help": f"Spans (calls), as otelcol's {component.id} connector counts them", **everything,
                      "labels": {**base, **dims, **calls_dims}})
    if histogram:
        out.rules.append({"name": f"{prefix}duration_seconds", "kind": "histogram",
                          "help": f"Span duration in seconds, as otelcol's {component.id} connector observes it",
                          **everything, "buckets": buckets, "labels": {**base, **dims, **hist_dims}})
        if unit == "ms":
            findings.note(sec.at("histogram"), f"otelcol's unit is ms (Prometheus: {prefix}duration_milliseconds); "
                                               f"recohop observes seconds: {prefix}duration_seconds, the same "
                                               "bounds in seconds")
    stage: dict[str, Any] = {"red": False, "log_records": False, "flush_interval": seconds_text(flush_ns),
                             "exemplars": {"enabled": exemplars_on}}
    if limit > 0:
        stage["series_limit"] = limit
    else:
        findings.note(sec.path, "otelcol sets no series limit by default; recohop folds series beyond "
                                "series_limit (2000 per metric) into otel_metric_overflow=\"true\" (raise it in the "
                                "hop config)")
    out.stage = stage
    out.comments = [f"note ({n.path[len(sec.path):].lstrip('.') or 'connector'}): {n.text}"
                    for n in findings.notes_under(sec.path)]
    return out
