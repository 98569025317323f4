"""Every deterministic tail_sampling policy type, imported, keeps exactly the traces otelcol v0.158 keeps.

One real collector runs one pipeline per policy (its own tail_sampling processor, its own exporter to its own
capture server), all fed the same synthetic traces, built to sit on the edges the translation has to get right:
durations around 500 ms (otelcol compares whole milliseconds), an `exception` event without status ERROR,
attributes on the span or on the resource, absent keys under invert_match, span counts around the bounds, and
a health-check path for `drop`. Each processor is then imported alone (`--only`), the traffic is replayed under
its policy file, and the kept sets must be equal, trace for trace.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from migrate_peers import run_cli, run_replay, scrape, send_traces, write_capture
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from otelcol_fixture import otelcol_binary, start_otelcol
from otlp_peers import CaptureServer, free_port, wait_until

from processor.otlp_values import add_attribute

pytestmark = pytest.mark.slow

# processor id -> its policies (YAML flow mappings, as a user writes them)
POLICIES: dict[str, list[str]] = {
    "status": ["{name: status, type: status_code, status_code: {status_codes: [ERROR]}}"],
    "fallback": ["{name: fallback, type: boolean_attribute, boolean_attribute: {key: fallback, value: true}}"],
    "flag-inverted": ["{name: flag-inverted, type: boolean_attribute, boolean_attribute: {key: flag, value: true, "
                      "invert_match: true}}"],
    "placement": ["{name: placement, type: string_attribute, string_attribute: {key: placement, "
                  "values: [email, push]}}"],
    "placement-regex-inverted": ["{name: placement-regex-inverted, type: string_attribute, string_attribute: "
                                 "{key: placement, values: ['^e', 'ar'], enabled_regex_matching: true, "
                                 "invert_match: true}}"],
    "numeric": ["{name: numeric, type: numeric_attribute, numeric_attribute: {key: n, min_value: 10, "
                "max_value: 20}}"],
    "numeric-inverted": ["{name: numeric-inverted, type: numeric_attribute, numeric_attribute: {key: n, "
                         "min_value: 25, invert_match: true}}"],
    "latency": ["{name: latency, type: latency, latency: {threshold_ms: 500}}"],
    "latency-band": ["{name: latency-band, type: latency, latency: {threshold_ms: 200, upper_threshold_ms: 600}}"],
    "span-count": ["{name: span-count, type: span_count, span_count: {min_spans: 3, max_spans: 5}}"],
    "environment": ["{name: environment, type: string_attribute, string_attribute: {key: deployment.environment, "
                    "values: [prod]}}"],
    "and-not": ["{name: and-not, type: and, and: {and_sub_policy: [{name: e, type: string_attribute, "
                "string_attribute: {key: placement, values: [email]}}, {name: n, type: not, not: {not_sub_policy: "
                "{name: s, type: status_code, status_code: {status_codes: [ERROR]}}}}]}}"],
    "drop-health": ["{name: health, type: drop, drop: {drop_sub_policy: [{name: h, type: string_attribute, "
                    "string_attribute: {key: url.path, values: [/healthz]}}]}}",
                    "{name: everything, type: always_sample}"],
    "ottl": ["{name: ottl, type: ottl_condition, ottl_condition: {span: ['attributes[\"n\"] >= 15 or "
             "resource.attributes[\"service.name\"] == \"svc-b\"', 'IsMatch(attributes[\"placement\"], \"^p\")', "
             "'status.code == STATUS_CODE_ERROR']}}"],
}
MS = 1_000_000
EDGE_DURATIONS = [100 * MS, 199 * MS + 999_999, 200 * MS, 200 * MS + 500_000, 201 * MS, 499 * MS + 999_999,
                  500 * MS, 500 * MS + 500_000, 501 * MS - 1, 501 * MS, 501 * MS + 1, 600 * MS + 500_000,
                  600 * MS + 999_999, 601 * MS, 650 * MS, 1200 * MS]


def synthetic_traces(count: int, seed: int) -> list[bytes]:
    """`count` traces, each in one or two requests (a trace's spans may arrive in separate requests)."""
    rng = random.Random(seed)
    requests = [ExportTraceServiceRequest() for _ in range(4)]
    base = 1_700_000_000 * 10**9
    for t in range(count):
        trace_id = rng.randbytes(16)
        duration = EDGE_DURATIONS[t % len(EDGE_DURATIONS)] if t < 3 * len(EDGE_DURATIONS) else \
            rng.randrange(50 * MS, 900 * MS)
        nspans = rng.choice([1, 2, 3, 4, 5, 6, 8])
        resource_attrs: dict[str, Any] = {"service.name": rng.choice(["svc-a", "svc-b"])}
        if rng.random() < 0.6:
            resource_attrs["deployment.environment"] = rng.choice(["prod", "staging"])
        if rng.random() < 0.1:
            resource_attrs["placement"] = rng.choice(["email", "cart"])  # on the resource: policies look there too
        start = base + t * 10 * MS
        spans = []
        for i in range(nspans):
            span = Span(trace_id=trace_id, span_id=rng.randbytes(8), name=f"op-{i}", kind=Span.SPAN_KIND_INTERNAL)
            if i == 0:  # the root first, spanning the trace (otelcol's latency check runs span by span)
                span.start_time_unix_nano, span.end_time_unix_nano = start, start + duration
            else:
                span.parent_span_id = spans[0].span_id
                offset = rng.randrange(0, duration // 2)
                span.start_time_unix_nano = start + offset
                span.end_time_unix_nano = start + offset + rng.randrange(0, duration - offset)
            if rng.random() < 0.5:
                add_attribute(span, "placement", rng.choice(["email", "push", "home", "cart", "search"]))
            if rng.random() < 0.3:
                add_attribute(span, "n", rng.randrange(0, 31))
            if rng.random() < 0.2:
                add_attribute(span, "flag", rng.random() < 0.5)
            if rng.random() < 0.08:
                add_attribute(span, "fallback", rng.random() < 0.7)
            if rng.random() < 0.05:
                add_attribute(span, "url.path", rng.choice(["/healthz", "/recommend"]))
            roll = rng.random()
            if roll < 0.06:
                span.status.code = Status.STATUS_CODE_ERROR
            elif roll < 0.12:
                span.status.code = Status.STATUS_CODE_OK
            elif roll < 0.18:  # an exception event without status ERROR: otelcol's status_code ignores it
                event = span.events.add(name="exception", time_unix_nano=span.start_time_unix_nano)
                add_attribute(event, "exception.type", "ValueError")
            spans.append(span)
        split = rng.randrange(1, nspans + 1)
        for part, chosen in ((requests[t % 2], spans[:split]), (requests[2 + t % 2], spans[split:])):
            if not chosen:
                continue
            rs = part.resource_spans.add()
            for key, value in resource_attrs.items():
                add_attribute(rs.resource, key, value)
            rs.scope_spans.add().spans.extend(chosen)
    return [r.SerializeToString() for r in requests if r.resource_spans]


def collector_config(grpc_port: int, health_port: int, metrics_port: int, servers: dict[str, CaptureServer]) -> str:
    processors = "".join(f"  tail_sampling/{pid}:\n    decision_wait: 1s\n    policies:\n" +
                         "".join(f"      - {p}\n" for p in policies) for pid, policies in POLICIES.items())
    exporters = "".join(f"  otlp/{pid}: {{endpoint: \"{servers[pid].endpoint}\", tls: {{insecure: true}}}}\n"
                        for pid in POLICIES)
    pipelines = "".join(f"    traces/{pid}: {{receivers: [otlp], processors: [tail_sampling/{pid}], "
                        f"exporters: [otlp/{pid}]}}\n" for pid in POLICIES)
    return f"""receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{grpc_port}"}}}}}}
processors:
{processors}exporters:
{exporters}extensions:
  health_check: {{endpoint: "127.0.0.1:{health_port}"}}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      level: detailed
      readers:
        - pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {metrics_port}}}}}}}
  pipelines:
{pipelines}"""


@pytest.fixture(scope="module")
def otelcol_kept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("migrate-policies")
    requests = synthetic_traces(240, seed=22)
    trace_ids = {span.trace_id for raw in requests for rs in ExportTraceServiceRequest.FromString(raw).resource_spans
                 for ss in rs.scope_spans for span in ss.spans}
    servers = {pid: CaptureServer().start() for pid in POLICIES}
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    config = collector_config(grpc_port, health_port, metrics_port, servers)
    collector = start_otelcol(otelcol_binary(), config, work / "otelcol", health_port, "otelcol")
    try:
        send_traces(f"127.0.0.1:{grpc_port}", requests)
        # The first policy of each processor (drops are evaluated first, and a drop ends the evaluation).
        names = [policies[0].split("name: ", 1)[1].split(",", 1)[0] for policies in POLICIES.values()]
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def undecided() -> dict[str, float]:
            counts = dict.fromkeys(names, 0.0)
            for metric, labels, value in scrape(url):
                if metric == "otelcol_processor_tail_sampling_count_traces_sampled":
                    for name in names:
                        if labels.get("policy") in (name, *(f"{pid}.{name}" for pid in POLICIES)):
                            counts[name] += value
            return {name: n for name, n in counts.items() if n != len(trace_ids)}

        wait_until(lambda: not undecided(), f"every policy deciding all {len(trace_ids)} traces "
                   "(count_traces_sampled per policy)", timeout=60, seen=undecided)
    finally:
        exit_code = collector.stop()  # SIGTERM drains each exporter's queue first
        for server in servers.values():
            server.stop()
    assert exit_code == 0, collector.log()[-3000:]
    config_path = work / "otelcol.yaml"
    config_path.write_text(config)
    capture = work / "capture.bin"
    write_capture(capture, requests)
    kept = {pid: {s.trace_id for s in server.spans()} for pid, server in servers.items()}
    return {"work": work, "config": config_path, "capture": capture, "kept": kept, "trace_ids": trace_ids}


@pytest.mark.parametrize("pid", list(POLICIES))
def test_imported_policy_keeps_what_otelcol_kept(pid: str, otelcol_kept: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out: Path = otelcol_kept["work"] / f"imported-{pid}"
    code, text = run_cli("policy", "import", str(otelcol_kept["config"]), "--out", str(out),
                         "--only", f"tail_sampling/{pid}")
    assert code == 0, text
    _, decided = run_replay(out / "policies.yaml", otelcol_kept["capture"], monkeypatch)
    assert set(decided) == otelcol_kept["trace_ids"]
    ours = {tid for tid, (kept, _) in decided.items() if kept}
    theirs = otelcol_kept["kept"][pid]
    assert 0 < len(theirs) < len(otelcol_kept["trace_ids"]), "the traffic separates kept from dropped traces"
    assert ours == theirs, f"only recohop: {len(ours - theirs)}, only otelcol: {len(theirs - ours)}"
