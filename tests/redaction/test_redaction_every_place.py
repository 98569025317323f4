"""Issue 19 through running hops: the PII corpus in every position of traces, logs and metrics, sent over real
gRPC, leaves no raw or easily reversible form (tests/redaction/leak_forms.py) in any place data rests or leaves:
what reaches the next hop, /metrics, the hop's debug log, the tail-sampling WAL segments, the exporter's spill
segments (the next hop is down until they are written), the --record capture, and the file sink's files. The
innocent corpus arrives byte-identical (>= 99 %). Native path and Python path (RECOHOP_NATIVE=0) alike."""

from __future__ import annotations

import os
import random
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from leak_forms import Haystack, json_strings
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from otlp_peers import metric_sum, wait_until
from test_redaction_issue19 import CORPUS, INNOCENT, add_trace_everywhere

from processor.signals import METHOD_PATHS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "collector-config" / "redaction" / "default.yaml"
KEY = "every-place-pseudonym-key-0123456789"
USER = "user-31337"  # an identity: pseudonymised by user.id, and its raw form in free text next to it
VALUES = list(dict.fromkeys(CORPUS))
CHECKED = [*VALUES, USER]  # leak indexes are into this list
PER_REQUEST = 10
PIPELINE = """
telemetry: {{log_level: debug}}
shutdown_timeout: 5s
pipeline:
  - type: limits
  - type: redaction
    rules: {rules}
  - type: spanmetrics
  - type: tail_sampling
    policies: {policies}
    root_grace: 100ms
    decision_wait: 1s
    flush_interval: 50ms
    wal: {{dir: {wal}, fsync: always, compact_interval: 10m, max_bytes: 64MiB}}
  - type: cardinality
"""
TO_NEXT_HOP = """
exporter:
  endpoint: {downstream}
  timeout: 2s
  queue: {{max_bytes: 16KiB, consumers: 1, send_batch_max_bytes: 64KiB}}
  retry: {{initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 5m}}
  spill: {{dir: {spill}, max_bytes: 64MiB, fsync: always}}
"""
TO_FILE = """
exporter:
  file: {{path: {sink}}}
"""


def _ids(rng: random.Random) -> tuple[bytes, bytes]:
    return rng.getrandbits(128).to_bytes(16, "big") or b"\x01" * 16, rng.getrandbits(64).to_bytes(8, "big") or b"\x01" * 8


def corpus_traces(rng: random.Random) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """One trace per corpus value with the value in every scanned position; the (trace id, span id) of each."""
    requests, ids = [], []
    now = time.time_ns()
    for start in range(0, len(VALUES), PER_REQUEST):
        req = ExportTraceServiceRequest()
        for value in VALUES[start:start + PER_REQUEST]:
            trace_id, span_id = _ids(rng)
            ids.append((trace_id, span_id))
            span = add_trace_everywhere(req, value, trace_id, span_id, "recommendation-service", now, now + 1000)
            span.attributes.add(key="user.id").value.string_value = USER
            span.attributes.add(key="url.path").value.string_value = f"/users/{USER}/recs"
            # the span's identity in its resource's text too (scrubbed there: it would map the pseudonym back)
            req.resource_spans[-1].resource.attributes.add(key="host.note").value.string_value = f"serving {USER}"
        requests.append(req.SerializeToString())
    return requests, ids


def corpus_logs(ids: list[tuple[bytes, bytes]]) -> list[bytes]:
    """A log record per value in its trace (so tail sampling buffers it and the WAL holds it)."""
    requests = []
    for start in range(0, len(VALUES), PER_REQUEST):
        req = ExportLogsServiceRequest()
        for value, (trace_id, span_id) in zip(VALUES[start:start + PER_REQUEST], ids[start:start + PER_REQUEST],
                                              strict=True):
            rl = req.resource_logs.add()
            rl.resource.attributes.add(key=value).value.string_value = value
            rl.resource.attributes.add(key="host.note").value.string_value = f"serving {USER}"
            sl = rl.scope_logs.add()
            sl.scope.name = value
            record = sl.log_records.add(event_name=value, trace_id=trace_id, span_id=span_id, severity_text="INFO",
                                        severity_number=9)
            record.body.string_value = f"body {value} by {USER}"
            record.attributes.add(key="user.id").value.string_value = USER
            record.attributes.add(key="m").value.bytes_value = value.encode("utf-8")
            record.attributes.add(key="k").value.string_value = value
        requests.append(req.SerializeToString())
    return requests


def corpus_metrics() -> list[bytes]:
    """The value as metric name, description, unit, data point key and value, exemplar attribute; user.id on the
    point with its raw form in another attribute (identity scrubbing in data points)."""
    requests = []
    now = time.time_ns()
    for start in range(0, len(VALUES), PER_REQUEST):
        req = ExportMetricsServiceRequest()
        rm = req.resource_metrics.add()
        rm.resource.attributes.add(key="service.name").value.string_value = "recommendation-service"
        sm = rm.scope_metrics.add()
        for value in VALUES[start:start + PER_REQUEST]:
            metric = sm.metrics.add(name=value, description=value, unit=value)
            point = metric.sum.data_points.add(as_int=1, time_unix_nano=now)
            metric.sum.aggregation_temporality = 2
            point.attributes.add(key="corpus.point").value.bool_value = True
            point.attributes.add(key=value).value.string_value = value
            point.attributes.add(key="user.id").value.string_value = USER
            point.attributes.add(key="note").value.string_value = f"for {USER}"
            point.exemplars.add(as_int=1, time_unix_nano=now).filtered_attributes.add(
                key="x").value.string_value = value
        requests.append(req.SerializeToString())
    return requests


def innocent_requests(rng: random.Random) -> list[tuple[str, bytes]]:
    """Each innocent value in a span attribute, a log body and a data point attribute."""
    traces, logs, metrics = ExportTraceServiceRequest(), ExportLogsServiceRequest(), ExportMetricsServiceRequest()
    ss = traces.resource_spans.add().scope_spans.add()
    sl = logs.resource_logs.add().scope_logs.add()
    sm = metrics.resource_metrics.add().scope_metrics.add()
    now = time.time_ns()
    for i, value in enumerate(INNOCENT):
        trace_id, span_id = _ids(rng)
        span = ss.spans.add(trace_id=trace_id, span_id=span_id, name=f"innocent-{i}", start_time_unix_nano=now,
                            end_time_unix_nano=now + 1)
        span.attributes.add(key="reco.note").value.string_value = value
        record = sl.log_records.add(trace_id=trace_id, span_id=span_id, severity_number=9)
        record.body.string_value = value
        record.attributes.add(key="innocent").value.int_value = i
        point = sm.metrics.add(name=f"innocent.{i}").gauge.data_points.add(as_double=1.0, time_unix_nano=now)
        point.attributes.add(key="q").value.string_value = value
    return [("traces", traces.SerializeToString()), ("logs", logs.SerializeToString()),
            ("metrics", metrics.SerializeToString())]


def send(endpoint: str, seed: int) -> int:
    """Every corpus and innocent request over gRPC; the number of spans sent."""
    rng = random.Random(seed)
    traces, ids = corpus_traces(rng)
    calls = [("traces", r) for r in traces] + [("logs", r) for r in corpus_logs(ids)]
    calls += [("metrics", r) for r in corpus_metrics()] + innocent_requests(rng)
    with grpc.insecure_channel(endpoint) as channel:
        for signal, payload in calls:
            channel.unary_unary(METHOD_PATHS[signal])(payload, timeout=20)
    return len(VALUES) + len(INNOCENT)


def files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def assert_no_leak(place: Haystack) -> None:
    leaked = place.leaks(CHECKED)
    # Indexes only (into CHECKED), never the values themselves.
    assert not leaked, f"{place.name}: {len(leaked)} corpus values found, at indexes {leaked[:10]}"


def innocent_kept(spans: list, log_records: list, points: list) -> float:
    kept = total = 0
    by_name = {span.name: span for span in spans}
    for i, value in enumerate(INNOCENT):
        span = by_name.get(f"innocent-{i}")
        # (tail sampling adds `sampling.policy`)
        kept += span is not None and [a.value.string_value for a in span.attributes if a.key == "reco.note"] == [value]
        total += 1
    bodies = {next(a.value.int_value for a in r.attributes if a.key == "innocent"): r.body.string_value
              for r in log_records if any(a.key == "innocent" for a in r.attributes)}
    in_logs = sum(bodies.get(i) == value for i, value in enumerate(INNOCENT))
    point_values = {a.value.string_value for p in points for a in p.attributes if a.key == "q"}
    in_points = sum(value in point_values for value in INNOCENT)
    kept += in_logs + in_points
    return kept / (3 * total)


def _policies(tmp_path: Path) -> Path:
    path = tmp_path / "keep-all.yaml"
    path.write_text("policies:\n  - name: everything\n    type: always\n")
    return path


def _log_records(requests: list) -> list:
    return [r for req in requests for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def _points(requests: list) -> list:
    return [p for req in requests for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            for p in getattr(m, m.WhichOneof("data") or "gauge").data_points]


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_no_corpus_value_rests_or_leaves_anywhere(downstream, start_hop, tmp_path: Path, native: bool) -> None:
    env = {"RECOHOP_PSEUDONYM_KEY": KEY, **({} if native else {"RECOHOP_NATIVE": "0"})}
    policies = _policies(tmp_path)
    wal, spill, record = tmp_path / "wal", tmp_path / "spill", tmp_path / "capture.jsonl"
    down = {"now": True}
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE if down["now"] else None
    config = PIPELINE.format(rules=RULES, policies=policies, wal=wal) + TO_NEXT_HOP.format(
        downstream=downstream.endpoint, spill=spill)
    hop = start_hop(config, env=env, extra_args=["--record", str(record)])
    sink = tmp_path / "sink" / "export.jsonl"
    file_hop = start_hop(PIPELINE.format(rules=RULES, policies=policies, wal=tmp_path / "wal-file")
                         + TO_FILE.format(sink=sink), env=env, name="file")
    spans = send(hop.endpoint, seed=1)
    send(file_hop.endpoint, seed=2)
    assert hop.metrics_url is not None

    # Next hop down: every trace decided and handed to the exporter, whose small memory queue spilled to disk.
    wait_until(lambda: metric_sum(hop.metrics_url, "recohop_sampling_buffer_traces ") == 0
               and metric_sum(hop.metrics_url, 'recohop_spill_records_total{op="written"}') >= 3,
               "every trace decided and spill segments written", timeout=30,
               seen=lambda: (metric_sum(hop.metrics_url, "recohop_sampling_buffer_traces "),
                             metric_sum(hop.metrics_url, 'recohop_spill_records_total{op="written"}')))
    spilled = files_bytes(spill)
    down["now"] = False
    wait_until(lambda: len(downstream.spans()) >= spans
               and len(_log_records(downstream.requests("logs"))) >= 2 * len(VALUES) // 2
               and sum(1 for p in _points(downstream.requests("metrics"))
                       for a in p.attributes if a.key == "corpus.point") >= len(VALUES),
               "every span, log record and corpus data point downstream", timeout=40,
               seen=lambda: (len(downstream.spans()), len(_log_records(downstream.requests("logs")))))
    wal_bytes = files_bytes(wal)
    metrics_text = urllib.request.urlopen(hop.metrics_url, timeout=5).read()
    assert hop.terminate() == 0 and file_hop.terminate() == 0
    sent = b"".join(b"".join(downstream.raw[s]) for s in ("traces", "logs", "metrics"))
    sink_bytes = files_bytes(sink.parent)

    places = [Haystack("downstream", sent), Haystack("/metrics", metrics_text),
              Haystack("hop log", hop.log_path.read_bytes()), Haystack("file hop log", file_hop.log_path.read_bytes()),
              Haystack("WAL segments", wal_bytes), Haystack("spill segments", spilled),
              Haystack("--record capture", record.read_bytes(), json_strings(record.read_bytes())),
              Haystack("file sink", sink_bytes, json_strings(sink_bytes))]
    for place in places:
        assert_no_leak(place)
    # Not vacuous: each place holds redacted data (detector tags, the identity's pseudonym).
    for place in (places[0], places[4], places[5], places[6], places[7]):
        assert b"<email>" in place.data and b"u_" in place.data, place.name
    assert b"listening" in places[2].data and b"traces_span_metrics_calls_total" in metrics_text
    assert os.stat(sink).st_size > 0 and len(list(json_strings(sink_bytes))) > len(VALUES)

    innocent = innocent_kept(downstream.spans(), _log_records(downstream.requests("logs")),
                             _points(downstream.requests("metrics")))
    assert innocent >= 0.99, f"{innocent:.3f} of the innocent values arrived byte-identical"
