"""End to end: OTel SDK -> recohop (real process, redaction stage) -> downstream / file sink.

No raw PII byte in what leaves the hop: the downstream's raw request bytes, the file sink, the --record
capture, the hop's /metrics and its log. Two hop processes with the same key give the same pseudonyms."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, Status, StatusCode
from otlp_peers import wait_until
from redaction_corpus import pii_values

from processor.redaction.pseudonym import Pseudonymiser

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "collector-config" / "redaction" / "default.yaml"
KEY = "e2e-pseudonym-key-0123456789"
PII = pii_values(seed=21)
RAW = [raw for _, raw in PII]
USERS = ["user-1001", "user-2002"]
CONFIG = """
exporter:
  endpoint: {downstream}
  retry: {{initial_interval: 50ms}}
pipeline:
  - type: redaction
    rules: {rules}
"""
FILE_CONFIG = """
exporter:
  file: {{path: {path}}}
pipeline:
  - type: redaction
    rules: {rules}
"""


def send_everything(endpoint: str) -> None:
    """Every PII value in spans (name, attributes, events, links, status), logs (bodies) and metrics."""
    provider = TracerProvider(resource=Resource.create({"service.name": "recommendation-service",
                                                        "host.note": RAW[0]}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("recohop.tests.redaction")
    for i, raw in enumerate(RAW):
        with tracer.start_as_current_span("reco.generate") as root:
            root.set_attributes({"user.id": USERS[i % 2], "user.email": f"{USERS[i % 2]}@example.com",
                                 "client.address": "198.51.100.23", "reco.search_query": f"q {raw}",
                                 "reco.placement": "home", "reco.request_id": f"req-{i:08x}",
                                 "reco.tags": [raw, "x"]})
            root.add_event("exception", {"exception.message": f"failed for {raw}"})
            link = Link(root.get_span_context(), {"link.note": raw})
            with tracer.start_as_current_span(f"lookup {raw}", links=[link]) as child:
                child.set_status(Status(StatusCode.ERROR, f"bad {raw}"))
    provider.shutdown()

    logs = LoggerProvider(resource=Resource.create({"service.name": "recommendation-service"}))
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))
    logger = logs.get_logger("recohop.tests.redaction")
    for raw in RAW:
        logger.emit(LogRecord(body=f"login from {raw}", severity_number=SeverityNumber.INFO,
                              attributes={"user.id": USERS[0]}))
        logger.emit(LogRecord(body={"event": "checkout", "detail": {"contact": [raw]}},
                              severity_number=SeverityNumber.INFO))
    logs.shutdown()

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=True),
                                           export_interval_millis=60_000)
    meters = MeterProvider(metric_readers=[reader])
    counter = meters.get_meter("recohop.tests.redaction").create_counter("reco.searches")
    for raw in RAW:
        counter.add(1, {"reco.search_query": f"q {raw}"})
    meters.shutdown()


def leaked(data: bytes) -> list[str]:
    """Which raw values occur in `data` (reported by kind only, never printed)."""
    return [kind for kind, raw in PII if raw.encode() in data] + [u for u in USERS if u.encode() in data]


def log_records(server) -> int:  # noqa: ANN001 - a CaptureServer
    return sum(len(sl.log_records) for r in server.requests("logs") for rl in r.resource_logs for sl in rl.scope_logs)


def test_no_raw_pii_leaves_the_hop(downstream, start_hop, tmp_path: Path) -> None:
    record = tmp_path / "capture.jsonl"
    hop = start_hop(CONFIG.format(downstream=downstream.endpoint, rules=RULES), env={"RECOHOP_PSEUDONYM_KEY": KEY},
                    extra_args=["--record", str(record)])
    send_everything(hop.endpoint)
    # Count log records, not requests: the hop joins queued requests into one call.
    wait_until(lambda: len(downstream.spans()) == 2 * len(RAW) and log_records(downstream) >= 2 * len(RAW)
               and downstream.raw["metrics"], f"{2 * len(RAW)} spans and log records, and metrics",
               seen=lambda: (len(downstream.spans()), log_records(downstream), len(downstream.raw["metrics"])))
    sent = b"".join(b"".join(downstream.raw[s]) for s in ("traces", "logs", "metrics"))
    assert not leaked(sent)
    assert b"<email>" in sent and b"<card>" in sent and b"<phone>" in sent and b"<iban>" in sent
    pseudonyms = {Pseudonymiser(KEY.encode()).pseudonym(u.encode(), "u_").encode() for u in USERS}
    assert all(p in sent for p in pseudonyms)  # same key in this process: the hop's pseudonyms
    assert b"198.51.100.0/24" in sent
    metrics_text = urllib.request.urlopen(hop.metrics_url, timeout=5).read()
    assert not leaked(metrics_text)
    assert b'recohop_redaction_rule_hits_total{rule="user.*"}' in metrics_text
    assert b"recohop_redaction_spans_touched_total" in metrics_text
    assert hop.terminate() == 0
    assert record.exists() and not leaked(record.read_bytes())
    assert not leaked(hop.log().encode()) and KEY not in hop.log()


def test_file_sink_holds_no_raw_pii_and_pseudonyms_match_across_processes(downstream, start_hop,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    first = start_hop(CONFIG.format(downstream=downstream.endpoint, rules=RULES), env={"RECOHOP_PSEUDONYM_KEY": KEY})
    second = start_hop(FILE_CONFIG.format(path=out, rules=RULES), env={"RECOHOP_PSEUDONYM_KEY": KEY}, name="file")
    for hop in (first, second):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=hop.endpoint, insecure=True)))
        with provider.get_tracer("t").start_as_current_span("reco.click") as span:
            span.set_attributes({"user.id": USERS[0], "reco.note": f"card {RAW[20]}"})
        provider.shutdown()
    downstream.wait_for_spans(1)
    assert second.terminate() == 0
    data = out.read_bytes()
    assert data and not leaked(data)
    via_grpc = next(a.value.string_value for a in downstream.spans()[0].attributes if a.key == "user.id")
    line = json.loads(data.splitlines()[0])
    attrs = line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    via_file = next(a["value"]["stringValue"] for a in attrs if a["key"] == "user.id")
    assert via_grpc == via_file and via_grpc.startswith("u_")


def test_pseudonymisation_without_key_refuses_to_start(start_hop, downstream) -> None:
    with pytest.raises(RuntimeError) as err:
        start_hop(CONFIG.format(downstream=downstream.endpoint, rules=RULES), env={"RECOHOP_PSEUDONYM_KEY": ""})
    assert "RECOHOP_PSEUDONYM_KEY" in str(err.value) and "pseudonymises" in str(err.value)
