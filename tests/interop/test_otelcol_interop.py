"""Interop of recohop's own outputs with the real OpenTelemetry Collector (issue 21, part 4).

recohop sits inside otelcol chains, so what it writes and what it answers must be what otelcol reads and expects,
not just what recohop's own readers accept:

1. The file sink's OTLP/JSON (hex ids, integer enums) is read back by otelcol's otlp_json_file receiver and
   re-exported over OTLP: every span, log record and metric data point arrives as recohop wrote it (and, with no
   stages, as the SDK sent it). Requests too large for one line of otelcol's default 1 MiB max_log_size must be
   cut (otelcol drops longer lines without a word), so large SDK batches are part of the data; so are the
   values where JSON codecs part ways (NaN, infinities, 64-bit extremes, bytes, escapes), sent by hand.
2. otelcol's otlp exporter (gzip, large batches from the batch processor, sending queue, retry_on_failure) in
   front of a recohop that pushes back: recohop answers RESOURCE_EXHAUSTED with RetryInfo while its export queue is
   full, the collector waits the interval recohop asked for and retries, and every span reaches the downstream
   exactly once. A TCP tap between the two reads the gRPC messages on the wire, so gzip and the retries are seen
   where they happen, not inferred.

Real processes on 127.0.0.1 free ports; waits are on conditions, and every process is stopped by its fixture.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from interop_peers import GrpcWireTap, leaves, log_entries, total
from interop_sdk import data_points_of, log_records_of, send_logs, send_metrics, send_traces, spans_of
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from otlp_peers import CaptureServer, HopProcess, free_port, wait_until
from otlp_peers import scrape_metrics as scrape

from processor import otlpjson
from processor.receiver import OVERLOAD_RETRY_AFTER, QUEUE_FULL_RETRY_AFTER
from processor.signals import REQUEST_TYPES, SERVICE_NAMES

pytestmark = pytest.mark.slow

TOP_KEYS = {"resourceSpans": "traces", "resourceLogs": "logs", "resourceMetrics": "metrics"}
RETRY_MESSAGE = "Exporting failed. Will retry the request after interval."


def collector_service(health_port: int, metrics_port: int, pipelines: str) -> str:
    """The `extensions` + `service` part every collector here shares: health_check (start_otelcol waits on it),
    JSON logs (parsed by the tests) and the collector's own metrics on a pull Prometheus reader."""
    return f"""
extensions:
  health_check: {{endpoint: 127.0.0.1:{health_port}}}
service:
  extensions: [health_check]
  telemetry:
    logs: {{encoding: json}}
    metrics:
      level: detailed
      readers:
        - pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {metrics_port}}}}}}}
  pipelines:
{pipelines}"""


def read_sink(path: Path) -> dict[str, list[Any]]:
    """The file sink's lines parsed with recohop's own reader, by signal; every line must fit otelcol's default
    max_log_size."""
    requests: dict[str, list[Any]] = {"traces": [], "logs": [], "metrics": []}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        assert len(line.encode()) <= otlpjson.MAX_LINE_BYTES, f"line {number}: {len(line)} bytes, otelcol drops it"
        top = line[:40].split('"')[1]
        signal = TOP_KEYS[top]
        requests[signal].append(otlpjson.loads(line, REQUEST_TYPES[signal]()))
    return requests


def span_identity(span: Any) -> tuple[str, str, str, str, int, int]:
    """What must survive every hop: trace id, span id, parent id, name, kind and status code."""
    return (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind,
            span.status.code)


def capture_counts(server: CaptureServer) -> dict[str, int]:
    return {"spans": len(server.spans()), "log_records": len(log_records_of(server.requests("logs"))),
            "data_points": len(data_points_of(server.requests("metrics")))}


def unmarshal_trouble(entries: list[dict]) -> list[dict]:
    """Collector log entries at warn or worse, or mentioning unmarshalling/JSON parsing."""
    return [e for e in entries if e.get("level") in ("warn", "error", "fatal", "panic")
            or re.search(r"unmarshal|ReadObject|json", str(e.get("msg", "")) + str(e.get("error", "")), re.I)]


def file_sink_hop(kind: str, sink: Path) -> tuple[str | None, list[str]]:
    """(config text, extra args) of a recohop whose exporter is the file sink at `sink`."""
    if kind == "no-stages":  # the file must hold exactly what the SDK sent
        return f"exporter:\n  file: {{path: {sink}}}\nshutdown_timeout: 20s\npipeline: []\n", []
    # The zero-config default pipeline (limits, redaction, span metrics, tail sampling, cardinality): what it keeps
    # and the metrics it derives (exemplars carry trace ids) are re-encoded before the sink writes them.
    return None, ["--forward", f"file:{sink}"]


@pytest.mark.parametrize("hop_kind", ["no-stages", "default-pipeline"])
def test_file_sink_output_is_read_back_by_otlp_json_file_receiver(
        hop_kind: str, tmp_path: Path, downstream: CaptureServer, start_hop: Callable[..., HopProcess],
        start_collector: Callable[..., Any]) -> None:
    """recohop writes, stops (SIGTERM flushes), otelcol's otlp_json_file receiver reads the file and exports it
    over OTLP to a capture server: everything arrives, as written."""
    sink = tmp_path / "sink" / "export.jsonl"
    config, args = file_sink_hop(hop_kind, sink)
    hop = start_hop(config, extra_args=args)
    sent_traces = send_traces(hop.endpoint, traces=900, batch=4096)  # 4096-span requests: > 1 MiB of JSON
    sent_logs = send_logs(hop.endpoint, 120)
    sent_metrics = send_metrics(hop.endpoint)
    assert hop.terminate() == 0, hop.log()[-3000:]

    written = read_sink(sink)
    written_spans = spans_of(written["traces"])
    sent_spans = spans_of(sent_traces)
    assert len(sent_spans) == 4500
    assert max(len(otlpjson.dumps(r)) for r in sent_traces) > otlpjson.MAX_LINE_BYTES, "no request past 1 MiB"
    if hop_kind == "no-stages":
        assert len(written["traces"]) > len(sent_traces), "a 4096-span request must be cut into several lines"
        for signal, sent in (("traces", sent_traces), ("logs", sent_logs), ("metrics", sent_metrics)):
            assert_same_telemetry(written[signal], sent, f"{signal}: the file against what the SDK sent")
    else:
        by_id = {span.span_id: span for span in sent_spans}
        assert written_spans, "the default pipeline kept nothing"
        assert all(span_identity(span) == span_identity(by_id[span.span_id]) for span in written_spans)
        errors = {span.trace_id for span in sent_spans if span.status.code == 2}
        kept_error_spans = {span.span_id for span in written_spans if span.trace_id in errors}
        assert kept_error_spans == {span.span_id for span in sent_spans if span.trace_id in errors}
        assert any(p.exemplars for _, p in data_points_of(written["metrics"])), "derived metrics carry exemplars"
    reread_with_otelcol(sink, written, downstream, start_collector)
    assert sorted(map(span_identity, downstream.spans())) == sorted(map(span_identity, written_spans))
    if hop_kind == "no-stages":
        assert sorted(map(span_identity, downstream.spans())) == sorted(map(span_identity, sent_spans))


def test_edge_values_written_by_the_file_sink_are_read_back_unchanged(
        tmp_path: Path, downstream: CaptureServer, start_hop: Callable[..., HopProcess],
        start_collector: Callable[..., Any]) -> None:
    """Values where JSON encoders and decoders part ways: NaN and infinities (strings in OTLP/JSON), -0.0 and
    denormals, uint64 and int64 extremes (strings), bytes (base64), U+2028, NUL and astral characters (escaped
    and surrogate pairs), empty values, trace state, flags, event names, exemplars, exponential histograms."""
    sink = tmp_path / "sink" / "export.jsonl"
    config, args = file_sink_hop("no-stages", sink)
    hop = start_hop(config, extra_args=args)
    sent = edge_requests()
    with grpc.insecure_channel(hop.endpoint) as channel:
        for signal, requests in sent.items():
            export = channel.unary_unary(f"/{SERVICE_NAMES[signal]}/Export")
            for request in requests:
                assert export(request.SerializeToString(), timeout=10) == b"", signal  # no partial success
    assert hop.terminate() == 0, hop.log()[-3000:]

    written = read_sink(sink)
    for signal, requests in sent.items():
        assert_same_telemetry(written[signal], requests, f"{signal}: the file against what was sent")
    reread_with_otelcol(sink, written, downstream, start_collector)


def reread_with_otelcol(sink: Path, written: dict[str, list[Any]], downstream: CaptureServer,
                        start_collector: Callable[..., Any]) -> None:
    """Run otelcol's otlp_json_file receiver on `sink`, exporting over OTLP to `downstream`, until everything
    written arrived; then stop it and check it arrived once, unchanged, without a parse complaint."""
    expected = {"spans": len(spans_of(written["traces"])), "log_records": len(log_records_of(written["logs"])),
                "data_points": len(data_points_of(written["metrics"]))}
    assert all(expected.values()), expected
    health, metrics_port = free_port(), free_port()
    pipelines = "".join(f"    {signal}: {{receivers: [otlp_json_file], exporters: [otlp_grpc]}}\n"
                        for signal in ("traces", "logs", "metrics"))
    reader = start_collector(f"""
receivers:
  otlp_json_file:
    include: [{sink}]
    start_at: beginning
    include_file_name: false  # else every item gets a log.file.name attribute (the file reader's default)
exporters:
  otlp_grpc:
    endpoint: {downstream.endpoint}
    tls: {{insecure: true}}
""" + collector_service(health, metrics_port, pipelines), health, "reader")
    own_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    wait_until(lambda: capture_counts(downstream) == expected, f"otelcol to re-export the file ({expected})",
               timeout=40, seen=lambda: capture_counts(downstream))
    wait_until(lambda: total(scrape(own_metrics), "otelcol_receiver_accepted_spans_total",
                             receiver="otlp_json_file") == expected["spans"],
               "the otlp_json_file receiver to count every span", timeout=20,
               seen=lambda: {k: v for k, v in scrape(own_metrics).items() if "receiver" in k})
    assert total(scrape(own_metrics), "otelcol_receiver_refused_spans_total") == 0
    assert reader.stop() == 0  # drains; nothing more may arrive (no line read twice)

    assert capture_counts(downstream) == expected
    for signal in ("traces", "logs", "metrics"):
        assert_same_telemetry(downstream.requests(signal), written[signal], f"{signal}: otelcol against the file")
    assert Counter(span.span_id for span in downstream.spans()).most_common(1)[0][1] == 1
    assert unmarshal_trouble(log_entries(reader.log())) == []


def edge_requests() -> dict[str, list[Any]]:
    """Hand-built requests holding the edge values, by signal (the SDK never produces most of them)."""
    def kv(key: str, **value: Any) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(**value))

    doubles = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    traces = REQUEST_TYPES["traces"]()
    rs = traces.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    rs.resource.attributes.append(kv("service.name", string_value="edge"))
    spans = rs.scope_spans.add(scope=InstrumentationScope(name="edge", version="1")).spans
    for i, value in enumerate(doubles, 1):
        span = spans.add(trace_id=bytes([i]) * 16, span_id=bytes([i]) * 8, name=f"double-{i}", kind=i % 6)
        span.attributes.append(kv("value", double_value=value))
    span = spans.add(trace_id=b"\xff" * 16, span_id=b"\xfe" * 8, parent_span_id=b"\x01" * 8, name="every-kind",
                     kind=5, trace_state="vendor=a,other=b", flags=0x301, start_time_unix_nano=2**64 - 2,
                     end_time_unix_nano=2**64 - 1, dropped_attributes_count=3, dropped_events_count=1)
    span.attributes.extend([
        kv("bytes", bytes_value=b"\x00\xff\x10 recohop"), kv("int.min", int_value=-(2**63)),
        kv("int.max", int_value=2**63 - 1), kv("text", string_value="é\u2028\x00 \"quoted\" \\ \U0001F600 \ud7ff"),
        kv("array", array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(), AnyValue(bool_value=False)])),
        kv("kvlist", kvlist_value=KeyValueList(values=[kv("nested", double_value=0.5)])), KeyValue(key="empty")])
    event = span.events.add(name="exception", time_unix_nano=1)
    event.attributes.append(kv("exception.message", string_value="model store timeout"))
    span.links.add(trace_id=b"\x0a" * 16, span_id=b"\x0b" * 8, trace_state="k=v", flags=0x100)
    span.status.code, span.status.message = 2, "model store timeout"

    logs = REQUEST_TYPES["logs"]()
    records = logs.resource_logs.add().scope_logs.add().log_records
    record = records.add(time_unix_nano=2**64 - 1, observed_time_unix_nano=1, severity_number=24,
                         severity_text="FATAL4", trace_id=b"\x07" * 16, span_id=b"\x08" * 8, flags=1,
                         event_name="reco.decision", dropped_attributes_count=2)
    record.body.bytes_value = b"\x01\x02\x03"
    records.add(severity_number=9).body.kvlist_value.values.append(kv("n", double_value=math.nan))

    metrics = REQUEST_TYPES["metrics"]()
    scope_metrics = metrics.resource_metrics.add().scope_metrics.add()
    gauge = scope_metrics.metrics.add(name="edge.gauge", unit="1", description="every double").gauge
    for value in doubles:
        gauge.data_points.add(as_double=value, time_unix_nano=2**64 - 1).attributes.append(kv("v", double_value=value))
    ints = scope_metrics.metrics.add(name="edge.sum").sum
    ints.aggregation_temporality, ints.is_monotonic = 1, False
    ints.data_points.add(as_int=-(2**63)).exemplars.add(
        trace_id=b"\x05" * 16, span_id=b"\x06" * 8, as_int=2**63 - 1, time_unix_nano=9,
        filtered_attributes=[kv("f", int_value=1)])
    histogram = scope_metrics.metrics.add(name="edge.histogram", unit="ms").histogram
    histogram.aggregation_temporality = 2
    histogram.data_points.add(count=2**64 - 1, sum=math.inf, bucket_counts=[2**64 - 1, 0],
                              explicit_bounds=[-0.0], min=-math.inf, max=math.nan, flags=1)
    exponential = scope_metrics.metrics.add(name="edge.exponential").exponential_histogram
    exponential.aggregation_temporality = 2
    point = exponential.data_points.add(count=3, sum=math.nan, scale=-10, zero_count=1, zero_threshold=1e-300)
    point.positive.offset, point.negative.offset = -2**31, 2**31 - 1
    point.positive.bucket_counts.extend([1, 2**63])
    summary = scope_metrics.metrics.add(name="edge.summary").summary
    # (Not -0.0 in a field without presence, like this sum: otelcol's protobuf encoder skips any zero, so the
    # sign is lost in the collector whatever the file said.)
    summary.data_points.add(count=1, sum=2.5).quantile_values.add(quantile=1.0, value=math.inf)
    return {"traces": [traces], "logs": [logs], "metrics": [metrics]}


def leaves_of(requests: list[Any]) -> list[tuple[str, ...]]:
    return [leaf for request in requests for leaf in leaves(request)]


def assert_same_telemetry(actual: list[Any], expected: list[Any], what: str) -> None:
    """The two request lists hold the same items under the same resources and scopes (grouping aside); on a
    difference, the failure shows one item only in each side."""
    got, want = Counter(leaves_of(actual)), Counter(leaves_of(expected))
    extra, missing = got - want, want - got
    assert not extra and not missing, (
        f"{what}: {sum(extra.values())} items unexpected, {sum(missing.values())} missing; e.g. unexpected "
        f"{next(iter(extra), None)} vs missing {next(iter(missing), None)}")


def go_duration(text: str) -> float:
    """A Go time.Duration string ("1s", "500ms", "1m2.5s", "30.4µs") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([0-9.]+)(h|ms|m|s|us|µs|ns)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Go duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_otelcol_otlp_exporter_retries_on_recohop_pushback_and_delivers_once(
        downstream: CaptureServer, start_hop: Callable[..., HopProcess], wire_tap: Callable[[str], GrpcWireTap],
        start_collector: Callable[..., Any]) -> None:
    """otelcol gateway (batch 8192, gzip, queue, retries) → recohop (one pending request, 32 KiB export queue) →
    a downstream that refuses until recohop has pushed back: the collector honours RetryInfo and nothing is lost
    or duplicated."""
    refusing = threading.Event()
    refusing.set()
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE if refusing.is_set() else None
    hop = start_hop(f"""
receiver: {{max_pending_requests: 1}}
exporter:
  endpoint: {downstream.endpoint}
  timeout: 10s
  queue: {{max_bytes: 32KiB, consumers: 1}}  # less than any batch (>= 512 spans): full after the first
  retry: {{initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 5m}}
shutdown_timeout: 20s
pipeline: []
""")
    tap = wire_tap(hop.endpoint)
    gateway_port, health, metrics_port = free_port(), free_port(), free_port()
    # Backoff stays under 300 ms (200 ms ± 50 % jitter), so a longer interval can only be recohop's RetryInfo.
    gateway = start_collector(f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{gateway_port}}}
processors:
  batch: {{send_batch_size: 8192, send_batch_max_size: 8192, timeout: 500ms}}
exporters:
  otlp_grpc:
    endpoint: {tap.endpoint}
    tls: {{insecure: true}}
    compression: gzip
    timeout: 30s
    sending_queue: {{enabled: true, num_consumers: 4, queue_size: 100}}
    retry_on_failure: {{enabled: true, initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 120s}}
""" + collector_service(health, metrics_port,
                        "    traces: {receivers: [otlp], processors: [batch], exporters: [otlp_grpc]}\n"),
        health, "gateway")
    own_metrics = f"http://127.0.0.1:{metrics_port}/metrics"

    def retries() -> list[dict]:
        return [e for e in log_entries(gateway.log()) if e.get("msg") == RETRY_MESSAGE]

    # Two rounds, so at least two batches reach recohop: the first fills its export queue (the downstream refuses),
    # the second is pushed back until the downstream opens.
    sent_requests = send_traces(f"127.0.0.1:{gateway_port}", traces=600, batch=512)
    wait_until(lambda: total(scrape(hop.metrics_url), "recohop_received_items_total", signal="spans") > 0,
               "the first batch to reach recohop", timeout=30,
               seen=lambda: [m.wire_bytes for m in tap.snapshot()])
    sent_requests += send_traces(f"127.0.0.1:{gateway_port}", traces=600, batch=512)
    sent = spans_of(sent_requests)
    sent_ids = {span.span_id for span in sent}
    assert len(sent_ids) == len(sent) == 6000

    # Hold the downstream closed until recohop has pushed back and the collector has said it will retry.
    wait_until(lambda: total(scrape(hop.metrics_url), "recohop_refused_requests_total") >= 2 and retries(),
               "recohop to refuse requests and the collector to schedule a retry", timeout=40,
               seen=lambda: (total(scrape(hop.metrics_url), "recohop_refused_requests_total"), len(retries())))
    refusing.clear()

    def settled() -> dict[str, float]:
        return {"delivered": len({span.span_id for span in downstream.spans()}),
                "recohop exported": total(scrape(hop.metrics_url), "recohop_exported_items_total", signal="spans"),
                "otelcol sent": total(scrape(own_metrics), "otelcol_exporter_sent_spans_total")}

    wait_until(lambda: set(settled().values()) == {len(sent)}, "every span delivered and counted", timeout=60,
               seen=settled)

    # Exactly once, unchanged: by span id, and span by span against what the SDK sent.
    received = downstream.spans()
    assert Counter(span.span_id for span in received).most_common(1)[0][1] == 1
    assert {span.span_id for span in received} == sent_ids
    assert sorted(map(span_identity, received)) == sorted(map(span_identity, sent))
    assert_same_telemetry(downstream.requests("traces"), sent_requests, "the downstream against the SDK")

    # recohop pushed back, accepted each span once and lost nothing.
    hop_metrics = scrape(hop.metrics_url)
    assert total(hop_metrics, "recohop_refused_requests_total") >= 2
    assert total(hop_metrics, "recohop_received_items_total", signal="spans") == len(sent)
    assert total(hop_metrics, "recohop_exported_items_total", signal="spans") == len(sent)
    assert total(hop_metrics, "recohop_export_failed_items_total") == 0

    # The collector retried after the interval recohop asked for, and dropped nothing.
    own = scrape(own_metrics)
    assert total(own, "otelcol_receiver_accepted_spans_total") == len(sent)
    assert total(own, "otelcol_exporter_send_failed_spans_total") == 0
    entries = log_entries(gateway.log())
    throttled = [e for e in retries() if "ResourceExhausted" in e.get("error", "")]
    assert throttled and len(throttled) == len(retries()), [e.get("error") for e in retries()]
    asked = (QUEUE_FULL_RETRY_AFTER, OVERLOAD_RETRY_AFTER)
    for entry in throttled:
        interval = go_duration(entry["interval"])
        assert any(abs(interval - delay) <= 0.05 for delay in asked), (entry["interval"], entry["error"])
        assert "Throttle (" in entry["error"], entry["error"]
    assert not [e for e in entries if e.get("level") == "error"], [e.get("msg") for e in entries]

    # On the wire: every request gzip, decoded to the spans sent; large batches; refused ones sent again.
    messages = tap.snapshot()
    assert tap.errors == []
    assert messages and all(m.compressed for m in messages), [(m.compressed, m.wire_bytes) for m in messages]
    bodies = Counter(m.body for m in messages)
    distinct = [REQUEST_TYPES["traces"].FromString(body) for body in bodies]
    assert sorted(span.span_id for span in spans_of(distinct)) == sorted(sent_ids)
    assert max(len(spans_of([request])) for request in distinct) >= 1000, "the batch processor's large batches"
    assert sum(bodies.values()) > len(bodies), "a refused request was sent again"
    # ... and not before the interval recohop asked for (backoff alone would resend within 300 ms).
    for body in bodies:
        times = [m.at for m in messages if m.body == body]
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert all(gap >= 0.9 * min(asked) for gap in gaps), gaps
    assert sum(m.wire_bytes for m in messages) < sum(len(m.body) for m in messages) / 2, "gzip shrinks spans"
