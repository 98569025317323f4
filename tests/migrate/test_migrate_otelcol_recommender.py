"""Issue 22, part 2: a collector config imported with `recohop policy import` does what the collector did.

One real otelcol (v0.158, the project's build) runs recommender traffic live: otlp receiver -> redaction ->
tail_sampling (status_code ERROR, boolean_attribute reco.fallback / reco.cold_start, latency 500 ms,
probabilistic 1 %, decision_wait 2s) -> otlp exporter to a capture server, and, beside it, the spanmetrics
connector on the redacted spans -> otlp metrics to the same server. Then the same config is imported, the
traffic goes through the imported redaction stage (what `recohop serve --record` records) into a capture file,
`recohop replay` runs it under the imported policies, and:

- the special traces (error, fallback, cold start, slow) kept are exactly the ones otelcol kept; over all
  traces, otelcol kept exactly what the imported deterministic policies keep plus what its own FNV-hashed 1 %
  picks (computed here; recohop's 1 % uses the trace id's randomness and picks others);
- `recohop redact check` accepts the imported redaction file, and the attributes of every span otelcol sent are
  the ones the imported rules make (allowlist, ignored key, HMAC-SHA256 hashes byte for byte);
- the imported derivation rules count the spans (calls) and fill the duration buckets per series as the
  connector did.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from typing import Any

import pytest
from migrate_peers import otelcol_probabilistic, run_cli, run_replay, scrape, send_traces, write_capture
from otelcol_fixture import otelcol_binary, start_otelcol
from otlp_peers import CaptureServer, free_port, wait_until
from recommender_capture import capture_recommender_traffic

from processor.config_node import Node
from processor.redaction.rules import load_rules_file
from processor.stages.base import StageContext
from processor.stages.redaction import build as build_redaction
from processor.stages.spanmetrics import build as build_spanmetrics

pytestmark = pytest.mark.slow

HMAC_ENV = "RECOHOP_IMPORT_TEST_HMAC_KEY"
HMAC_KEY = "import-test-key-0123456789abcdef-0123456789"  # >= 32 bytes, as otelcol's hmac-sha256 wants
SPECIAL = ("error", "fallback", "cold_start", "slow")

COLLECTOR = """
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{grpc_port}"}}}}}}
processors:
  redaction:
    allow_all_keys: false
    allowed_keys: [reco.fallback, reco.cold_start, reco.placement, reco.strategy, reco.model_version,
                   experiment.variant, reco.num_results, reco.cache_hit, service.name, service.version,
                   user.id, user.email, client.address]
    ignored_keys: [reco.item_id]
    blocked_key_patterns: ["^user\\\\.", "^client\\\\."]
    hash_function: hmac-sha256
    hmac_key: ${{env:{hmac_env}}}
  tail_sampling:
    decision_wait: 2s
    num_traces: 20000
    policies:
      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
      - {{name: fallback, type: boolean_attribute, boolean_attribute: {{key: reco.fallback, value: true}}}}
      - {{name: cold-start, type: boolean_attribute, boolean_attribute: {{key: reco.cold_start, value: true}}}}
      - {{name: slow, type: latency, latency: {{threshold_ms: 500}}}}
      - {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: 1}}}}
connectors:
  spanmetrics:
    dimensions: [{{name: reco.placement, default: none}}]
    histogram: {{explicit: {{buckets: [5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms, 1s, 2500ms]}}}}
    metrics_flush_interval: 1s
exporters:
  otlp:
    endpoint: "{capture}"
    tls: {{insecure: true}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health_port}"}}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      level: detailed
      readers:
        - pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {metrics_port}}}}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [redaction, tail_sampling], exporters: [otlp]}}
    traces/spanmetrics: {{receivers: [otlp], processors: [redaction], exporters: [spanmetrics]}}
    metrics: {{receivers: [spanmetrics], exporters: [otlp]}}
"""


def spans_of(requests: list[Any]) -> list[tuple[Any, Any]]:
    """(resource, span) of every span in parsed trace requests."""
    return [(rs.resource, span) for req in requests for rs in req.resource_spans for ss in rs.scope_spans
            for span in ss.spans]


def attributes(kvs: Any) -> dict[str, Any]:
    """key -> (value type, value): a string "1" and an int 1 differ."""
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        value = kv.value.SerializeToString(deterministic=True) if which in ("array_value", "kvlist_value") \
            else getattr(kv.value, which) if which else None
        out[kv.key] = (which, value)
    return out


def latest_metrics(server: CaptureServer) -> dict[str, dict[tuple, Any]]:
    """The connector's last cumulative point per metric and attribute set (it resends every series each flush)."""
    latest: dict[str, dict[tuple, Any]] = {}
    for request in server.requests("metrics"):
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        key = tuple(sorted(attributes(point.attributes).items()))
                        latest.setdefault(metric.name, {})[key] = point
    return latest


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Everything the collector did with the traffic, and the traffic itself."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    work = tmp_path_factory.mktemp("migrate-live")
    requests, truth = capture_recommender_traffic(60, 10, seed=5,
                                                  faults="error=0.03,slow=0.03,timeout=0.03,cache_miss=0.2")
    parsed = [ExportTraceServiceRequest.FromString(raw) for raw in requests]
    all_spans = spans_of(parsed)
    trace_ids = {span.trace_id for _, span in all_spans}
    server = CaptureServer().start()
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    config = COLLECTOR.format(grpc_port=grpc_port, health_port=health_port, metrics_port=metrics_port,
                              capture=server.endpoint, hmac_env=HMAC_ENV)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(HMAC_ENV, HMAC_KEY)  # the collector inherits it: ${env:...} in its config
        collector = start_otelcol(otelcol_binary(), config, work / "otelcol", health_port, "otelcol")
    try:
        send_traces(f"127.0.0.1:{grpc_port}", requests)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

        def decided() -> float:
            return sum(v for name, _, v in scrape(metrics_url)
                       if name == "otelcol_processor_tail_sampling_global_count_traces_sampled")

        wait_until(lambda: decided() == len(trace_ids), f"otelcol's tail_sampling deciding all {len(trace_ids)} "
                   "traces (global_count_traces_sampled)", timeout=60, seen=decided)

        def calls_counted() -> float:
            points = latest_metrics(server).get("traces.span.metrics.calls", {})
            return sum(p.as_int for p in points.values())

        wait_until(lambda: calls_counted() == len(all_spans), f"the spanmetrics connector counting all "
                   f"{len(all_spans)} spans at the capture server", timeout=60, seen=calls_counted)
    finally:
        exit_code = collector.stop()  # SIGTERM: the exporter drains its queue first
        server.stop()
    assert exit_code == 0, collector.log()[-3000:]
    config_path = work / "otelcol.yaml"
    config_path.write_text(config)
    return {"work": work, "config": config_path, "requests": requests, "parsed": parsed, "truth": truth,
            "trace_ids": trace_ids, "all_spans": all_spans, "kept": server.requests("traces"),
            "metrics": latest_metrics(server)}


@pytest.fixture(scope="module")
def imported(live: dict[str, Any]) -> dict[str, Any]:
    """`recohop policy import` on the collector's config, and the traffic through the imported redaction stage
    (what the imported hop records with `serve --record`)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from prometheus_client import CollectorRegistry

    out = live["work"] / "imported"
    code, text = run_cli("policy", "import", str(live["config"]), "--out", str(out))
    assert code == 0, text
    with pytest.MonkeyPatch.context() as env:
        env.setenv(HMAC_ENV, HMAC_KEY)
        stage = build_redaction(Node({"type": "redaction", "rules": "redaction.yaml"}, out / "recohop.yaml"),
                                StageContext(registry=CollectorRegistry()))
    redacted = []
    for raw in live["requests"]:
        request = ExportTraceServiceRequest.FromString(raw)
        redacted.extend(stage.on_traces(request))
    capture = live["work"] / "capture.bin"
    write_capture(capture, [r.SerializeToString() for r in redacted])
    return {"out": out, "report": text, "redacted": redacted, "capture": capture}


def test_import_reports_every_file_and_what_stays_in_otelcol(imported: dict[str, Any]) -> None:
    report = imported["report"]
    for name in ("policies.yaml", "redaction.yaml", "derivations.yaml", "recohop.yaml"):
        assert f"{name}: ok" in report
    assert "5 policies: errors [status_code], fallback [attribute], cold-start [attribute], slow [latency], " \
           "baseline [probabilistic]" in report
    assert "pipeline: redaction -> spanmetrics -> tail_sampling" in report
    assert "left in otelcol (no recohop stage of their kind): receivers.otlp, exporters.otlp, " \
           "extensions.health_check" in report
    assert "processors.tail_sampling.policies[4] (baseline).probabilistic: the same percentage, other traces" in report


def test_replay_keeps_the_special_traces_otelcol_kept(live: dict[str, Any], imported: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    report, decided = run_replay(imported["out"] / "policies.yaml", imported["capture"], monkeypatch)
    assert set(decided) == live["trace_ids"], "replay decides every trace of the capture once"
    otelcol_kept = {span.trace_id for _, span in spans_of(live["kept"])}
    by_policy = {tid for tid, (kept, policy) in decided.items() if kept and policy != "baseline"}
    otelcol_baseline = otelcol_probabilistic(live["trace_ids"], 1)
    replay_kept = {tid for tid, (kept, _) in decided.items() if kept}

    for kind in SPECIAL:
        ids = {bytes.fromhex(h) for h in live["truth"]["trace_ids"][kind]}
        assert ids, f"the traffic has {kind} traces"
        assert otelcol_kept & ids, f"otelcol kept {kind} traces"
        assert otelcol_kept & ids == (by_policy | otelcol_baseline) & ids, \
            f"{kind}: otelcol kept {len(otelcol_kept & ids)}, the imported policies (+ otelcol's own 1 %) " \
            f"{len((by_policy | otelcol_baseline) & ids)}"
    for kind in ("error", "fallback", "cold_start"):  # unconditional keeps: every one of them, on both sides
        ids = {bytes.fromhex(h) for h in live["truth"]["trace_ids"][kind]}
        assert ids <= otelcol_kept and ids <= replay_kept, kind
    # Beyond the special traces: all that differs is whose 1 % was drawn.
    assert otelcol_kept == by_policy | otelcol_baseline
    assert "keep     baseline" in report and "keep     errors" in report
    policies_seen = Counter(policy for kept, policy in decided.values() if kept)
    assert set(policies_seen) <= {"errors", "fallback", "cold-start", "slow", "baseline"}


def test_redact_check_accepts_the_imported_rules(imported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HMAC_ENV, HMAC_KEY)
    code, text = run_cli("redact", "check", str(imported["out"] / "redaction.yaml"))
    assert code == 0, text
    assert "ok (allowlist; 11 keep, 3 pseudonymise; detectors: off; pseudonym key: from $" + HMAC_ENV + " (set))" \
        in text
    rules = load_rules_file(imported["out"] / "redaction.yaml")
    assert (rules.mode, rules.otherwise.action if rules.otherwise else None) == ("allowlist", "drop")


def test_imported_redaction_changes_what_otelcol_changed(live: dict[str, Any], imported: dict[str, Any]) -> None:
    ours = {(span.trace_id, span.span_id): (resource, span) for resource, span in spans_of(imported["redacted"])}
    theirs = spans_of(live["kept"])
    assert theirs, "otelcol sent kept spans"
    hashed = 0
    for resource, span in theirs:
        our_resource, our_span = ours[(span.trace_id, span.span_id)]
        assert attributes(span.attributes) == attributes(our_span.attributes), span.name
        assert attributes(resource.attributes) == attributes(our_resource.attributes)
        assert [attributes(e.attributes) for e in span.events] == [attributes(e.attributes) for e in our_span.events]
        hashed += "user.id" in attributes(span.attributes)
    assert hashed, "user.id (hashed) was among the compared attributes"
    original = {(s.trace_id, s.span_id): s for _, s in live["all_spans"]}
    span = next(s for _, s in theirs if "user.id" in attributes(s.attributes))

    _, raw_user = attributes(original[(span.trace_id, span.span_id)].attributes)["user.id"]
    expected = hmac.new(HMAC_KEY.encode(), raw_user.encode(), hashlib.sha256).hexdigest()
    assert attributes(span.attributes)["user.id"] == ("string_value", expected)  # otelcol's hmac-sha256 = ours


def test_imported_derivations_count_what_the_connector_counted(live: dict[str, Any],
                                                               imported: dict[str, Any]) -> None:
    from prometheus_client import CollectorRegistry

    hop = Node.from_file(imported["out"] / "recohop.yaml")
    stage_node = Node(next(s for s in hop.data["pipeline"] if s["type"] == "spanmetrics"),
                      imported["out"] / "recohop.yaml", "pipeline[1]")
    stage = build_spanmetrics(stage_node, StageContext(registry=CollectorRegistry()))
    for request in imported["redacted"]:
        stage.on_traces(request)
    snapshot = {m.name: m for m in stage.deriver.snapshot()}  # type: ignore[attr-defined]
    label_of = {"service.name": "service_name", "span.name": "span_name", "span.kind": "span_kind",
                "status.code": "status_code", "reco.placement": "reco_placement"}

    def ours(name: str) -> dict[tuple, Any]:
        return {tuple(sorted(p.labels.items())): p for p in snapshot[name].points}

    instances = {dict(k)["collector.instance.id"][1] for k in live["metrics"]["traces.span.metrics.calls"]}
    assert len(instances) == 1  # otelcol's own id on every series (noted by the import; recohop has none)

    def key(attrs: tuple) -> tuple:
        return tuple(sorted((label_of[k], v[1]) for k, v in attrs if k != "collector.instance.id"))

    calls = {key(k): p.as_int for k, p in live["metrics"]["traces.span.metrics.calls"].items()}
    assert sum(calls.values()) == len(live["all_spans"])
    assert {k: int(p.value) for k, p in ours("traces_span_metrics_calls_total").items()} == calls
    durations = {key(k): list(p.bucket_counts) for k, p in live["metrics"]["traces.span.metrics.duration"].items()}
    assert {k: p.buckets for k, p in ours("traces_span_metrics_duration_seconds").items()} == durations
    assert snapshot["traces_span_metrics_duration_seconds"].bounds == [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                                        1.0, 2.5]
