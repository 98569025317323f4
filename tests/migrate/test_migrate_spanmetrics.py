"""`recohop policy import`: otelcol's spanmetrics connector -> recohop derivation rules and stage settings (the
live comparison with the connector's counts is in test_migrate_otelcol_recommender.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from migrate_peers import run_cli
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from processor.config_node import Node
from processor.otlp_values import add_attribute
from processor.stages.base import StageContext
from processor.stages.spanmetrics import DEFAULT_BUCKETS
from processor.stages.spanmetrics import build as build_spanmetrics

RED_LABELS = {"service_name": {"resource": "service.name"}, "span_name": {"span": "name"},
              "span_kind": {"span": "kind"}, "status_code": {"span": "status_code"}}


def import_connector(tmp_path: Path, settings: str) -> tuple[int, str, Path]:
    source = tmp_path / "otelcol.yaml"
    body = "".join(f"    {line}\n" for line in settings.splitlines()) or "    {}\n"
    source.write_text("connectors:\n  spanmetrics:\n" + body + "service:\n  pipelines:\n"
                      "    traces: {receivers: [otlp], exporters: [spanmetrics]}\n"
                      "    metrics: {receivers: [spanmetrics], exporters: [otlp]}\n")
    out = tmp_path / "out"
    code, text = run_cli("policy", "import", str(source), "--out", str(out))
    return code, text, out


def derived(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rules = yaml.safe_load((out / "derivations.yaml").read_text())["rules"]
    stage = yaml.safe_load((out / "recohop.yaml").read_text())["pipeline"][0]
    return rules, stage


def test_defaults_are_the_connectors(tmp_path: Path) -> None:
    code, text, out = import_connector(tmp_path, "")
    assert code == 0, text
    rules, stage = derived(out)
    assert [(r["name"], r["kind"], r["spans_regex"], r["labels"]) for r in rules] == [
        ("traces_span_metrics_calls_total", "counter", "", RED_LABELS),
        ("traces_span_metrics_duration_seconds", "histogram", "", RED_LABELS)]
    assert rules[1]["buckets"] == DEFAULT_BUCKETS  # otelcol's 2ms ... 15s, in seconds
    assert stage == {"type": "spanmetrics", "rules": "derivations.yaml", "red": False, "log_records": False,
                     "flush_interval": "60s", "exemplars": {"enabled": False}}
    assert "traces_span_metrics_duration_milliseconds" in text  # the renamed histogram is said out loud
    assert "otelcol sets no series limit by default" in text
    assert "collector.instance.id" in text


def test_dimensions_buckets_and_settings(tmp_path: Path) -> None:
    code, text, out = import_connector(tmp_path, """\
namespace: reco.spans
dimensions: [{name: reco.placement, default: none}, {name: deployment.environment}]
calls_dimensions: [{name: http.method}]
exclude_dimensions: [span.kind, collector.instance.id]
histogram:
  unit: s
  explicit: {buckets: [100us, 2.5ms, 1s, 1m]}
  dimensions: [{name: reco.model_version}]
metrics_flush_interval: 1500ms
aggregation_cardinality_limit: 500
exemplars: {enabled: true, max_per_data_point: 2}
metrics_expiration: 5m""")
    assert code == 0, text
    rules, stage = derived(out)
    common = {k: v for k, v in RED_LABELS.items() if k != "span_kind"}
    common |= {"reco_placement": {"attribute": "reco.placement", "default": "none"},
               "deployment_environment": {"resource": "deployment.environment"}}
    assert rules[0]["name"] == "reco_spans_calls_total"
    assert rules[0]["labels"] == {**common, "http_method": {"attribute": "http.method"}}
    assert rules[1]["name"] == "reco_spans_duration_seconds"
    assert rules[1]["labels"] == {**common, "reco_model_version": {"attribute": "reco.model_version"}}
    assert rules[1]["buckets"] == [0.0001, 0.0025, 1.0, 60.0]
    assert stage == {"type": "spanmetrics", "rules": "derivations.yaml", "red": False, "log_records": False,
                     "flush_interval": "1500ms", "exemplars": {"enabled": True}, "series_limit": 500}
    assert "duration_milliseconds" not in text  # unit s: the same name as otelcol's
    assert "label deployment_environment reads the resource attribute deployment.environment only" in text
    assert "recohop attaches exemplars only for traces its tail sampling keeps" in text
    assert "metrics_expiration: recohop keeps a series until restart" in text
    assert "collector.instance.id" not in text


def test_imported_rules_label_spans_as_the_connector(tmp_path: Path) -> None:
    code, text, out = import_connector(tmp_path, "dimensions: [{name: reco.placement, default: none}]\n"
                                                 "histogram: {explicit: {buckets: [10ms, 100ms]}}")
    assert code == 0, text
    hop = Node.from_file(out / "recohop.yaml")
    stage = build_spanmetrics(Node(hop.data["pipeline"][0], out / "recohop.yaml", "pipeline[0]"),
                              StageContext(registry=CollectorRegistry()))
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attribute(rs.resource, "service.name", "reco")
    for placement, millis in (("email", 5), (None, 50), ("email", 500)):
        span = rs.scope_spans.add().spans.add(name="reco.generate", kind=Span.SPAN_KIND_SERVER,
                                              start_time_unix_nano=0, end_time_unix_nano=millis * 1_000_000)
        if placement:
            add_attribute(span, "reco.placement", placement)
    stage.on_traces(request)
    metrics = {m.name: m for m in stage.deriver.snapshot()}  # type: ignore[attr-defined]
    calls = {p.labels["reco_placement"]: p.value for p in metrics["traces_span_metrics_calls_total"].points}
    assert calls == {"email": 2, "none": 1}
    labels = metrics["traces_span_metrics_calls_total"].points[0].labels
    assert {k: labels[k] for k in ("service_name", "span_kind", "status_code")} == {
        "service_name": "reco", "span_kind": "SPAN_KIND_SERVER", "status_code": "STATUS_CODE_UNSET"}
    buckets = {p.labels["reco_placement"]: p.buckets for p in metrics["traces_span_metrics_duration_seconds"].points}
    assert buckets == {"email": [1, 0, 1], "none": [0, 1, 0]}


@pytest.mark.parametrize(("settings", "where", "why"), [
    ("dimensions: [{glob: 'http.*'}]", "dimensions[0].glob", "named one by one"),
    ("dimensions: [{name: user.id}]", "dimensions[0].name", "forbidden key"),
    ("histogram: {exponential: {max_size: 160}}", "histogram.exponential", "explicit buckets only"),
    ("histogram: {explicit: {buckets: [1s, 100ms]}}", "histogram.explicit.buckets", "must increase"),
    ("histogram: {explicit: {buckets: [0s]}}", "histogram.explicit.buckets[0]", "positive duration"),
    ("histogram: {unit: us}", "histogram.unit", "not ms or s"),
    ("aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA", "aggregation_temporality", "cumulative"),
    ("events: {enabled: true, dimensions: [{name: exception.type}]}", "events.enabled", "span events"),
    ("include_instrumentation_scope: [io.opentelemetry.x]", "include_instrumentation_scope", "scope source"),
    ("add_resource_attributes: true", "add_resource_attributes", "only the labels a rule names"),
    ("enable_metrics_sampling_method: true", "enable_metrics_sampling_method", "extrapolate"),
    ("dimensions_cache: 5", "dimensions_cache", "not a setting of otelcol v0.158's spanmetrics connector"),
])
def test_refusals(tmp_path: Path, settings: str, where: str, why: str) -> None:
    code, text, out = import_connector(tmp_path, settings)
    assert code == 2, text
    line = next(line for line in text.splitlines() if line.startswith(f"  connectors.spanmetrics.{where}: "))
    assert why in line, line
    assert not out.exists()
