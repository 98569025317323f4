"""kill -9 a real hop with traces buffered for tail sampling: the restarted hop replays its write-ahead log and
sends on every kept trace, whole; nothing raw-PII is on disk (redaction runs before the buffer is logged)."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from otlp_peers import wait_until
from sampling_helpers import DEFAULT_POLICIES, REPO, Harness

from processor.sampling.wal import segment_files

pytestmark = pytest.mark.slow

KEY = "wal-e2e-pseudonym-key-0123456789"
EMAIL = "wal.victim@example.com"
USER_ID = "user-wal-424242"
CONFIG = """
exporter:
  endpoint: {downstream}
  retry: {{initial_interval: 50ms}}
pipeline:
  - type: redaction
    rules: {rules}
  - type: tail_sampling
    policies: {policies}
    root_grace: {root_grace}
    decision_wait: {decision_wait}
    wal: {{dir: {wal}, fsync: interval, fsync_interval: 1s, max_bytes: 64MiB}}
"""


def config(downstream: str, wal: Path, root_grace: str, decision_wait: str) -> str:
    return CONFIG.format(downstream=downstream, rules=REPO / "collector-config" / "redaction" / "default.yaml",
                         policies=DEFAULT_POLICIES, wal=wal, root_grace=root_grace, decision_wait=decision_wait)


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def send_traces(endpoint: str, count: int, errors: int) -> tuple[list, set[int]]:
    """`count` recommendation traces (3 spans, PII on the root), the first `errors` failing; returns the spans as
    the SDK encodes them (for the no-crash reference) and the error trace ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": "recommendation-service"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                                   max_export_batch_size=200, schedule_delay_millis=100))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("recommender")
    error_ids = set()
    for i in range(count):
        root = tracer.start_span("reco.generate", kind=SpanKind.SERVER)
        root.set_attribute("user.email", EMAIL)
        root.set_attribute("user.id", USER_ID)
        root.set_attribute("reco.strategy", "cf")
        ctx = set_span_in_context(root)
        for name in ("reco.fetch_candidates", "reco.score_candidates"):
            child = tracer.start_span(name, context=ctx)
            if i < errors and name == "reco.score_candidates":
                child.record_exception(TimeoutError("model server"))
                child.set_status(Status(StatusCode.ERROR))
                error_ids.add(root.get_span_context().trace_id)
            child.end()
        root.end()
    provider.force_flush()
    provider.shutdown()
    return list(memory.get_finished_spans()), error_ids


def kept_without_crash(spans: list) -> set[bytes]:
    """The trace ids the same policies keep on a stage that never crashed."""
    reference = Harness(DEFAULT_POLICIES, root_grace="1s")
    reference.send(encode_spans(spans))
    reference.advance(2)
    return set(reference.out_span_counts())


def test_kill_9_mid_stream_loses_nothing(downstream, start_hop, tmp_path: Path) -> None:  # noqa: ANN001
    wal = tmp_path / "wal"
    env = {"RECOHOP_PSEUDONYM_KEY": KEY}
    first = start_hop(config(downstream.endpoint, wal, "60s", "120s"), env=env)  # everything stays buffered
    sent, error_ids = send_traces(first.endpoint, count=400, errors=40)
    wait_until(lambda: metric(first.metrics_url, "recohop_sampling_buffer_traces") == 400, "400 traces buffered",
               seen=lambda: metric(first.metrics_url, "recohop_sampling_buffer_traces"))
    on_disk = b"".join(path.read_bytes() for _, path in segment_files(wal))
    assert b"reco.score_candidates" in on_disk  # the spans are there ...
    assert EMAIL.encode() not in on_disk and USER_ID.encode() not in on_disk  # ... their raw PII is not
    os.kill(first.proc.pid, signal.SIGKILL)
    assert first.proc.wait(10) == -signal.SIGKILL
    assert downstream.spans() == []  # nothing was decided before the crash

    second = start_hop(config(downstream.endpoint, wal, "300ms", "3s"), env=env)
    replayed = metric(second.metrics_url, "recohop_wal_replayed_spans_total")
    assert replayed == len(sent)
    kept = kept_without_crash(sent)
    want = {tid.to_bytes(16, "big") for tid in error_ids}
    assert want <= kept
    wait_until(lambda: {s.trace_id for s in downstream.spans()} >= kept, f"{len(kept)} kept traces delivered",
               seen=lambda: f"{len(kept & {s.trace_id for s in downstream.spans()})} of them")
    delivered = Counter(s.trace_id for s in {s.span_id: s for s in downstream.spans()}.values())
    assert set(delivered) == kept
    assert all(delivered[tid] == 3 for tid in kept)  # every kept trace arrives whole (errors included)
    raw_out = b"".join(downstream.raw["traces"])
    assert EMAIL.encode() not in raw_out and USER_ID.encode() not in raw_out
    print(f"\nkill -9 figures: spans sent {len(sent)}, buffered at kill {int(replayed)} (replayed), "
          f"kept traces {len(kept)} ({len(want)} errors), spans delivered after restart "
          f"{sum(delivered.values())} of {3 * len(kept)}, lost 0")

    assert second.terminate() == 0  # graceful: decides and flushes everything, then empties the log
    assert segment_files(wal) == []
