"""Operator signals on a running `recohop serve`: SIGHUP reloads the rule files (validated first; a bad file
keeps the running rules and is counted; buffered traces are handed over, not lost), and SIGTERM drains:
health NOT_SERVING at once while requests are still accepted for `receiver.drain_window`."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from otlp_peers import CaptureServer, HopProcess, wait_until

from processor.otlp_values import kv
from processor.signals import METHOD_PATHS, REQUEST_TYPES

KEY = {"RECOHOP_PSEUDONYM_KEY": "reload-test-key-0123456789abcdef"}
POLICIES = "policies:\n  - {name: errors, type: status_code}\n  - {name: fallback, type: attribute, key: reco.fallback, value: true}\n"
REDACTION = "rules:\n  - {glob: \"user.*\", action: drop}\n"
CONFIG = """
exporter:
  endpoint: {downstream}
  retry: {{initial_interval: 50ms}}
pipeline:
  - type: redaction
    rules: redaction.yaml
  - type: tail_sampling
    policies: policies.yaml
    decision_wait: 60s
    root_grace: 60s
"""


def metric(hop: HopProcess, sample: str) -> float:
    assert hop.metrics_url is not None
    text = urllib.request.urlopen(hop.metrics_url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample))


def send_trace(hop: HopProcess, trace_id: bytes, attributes: list, error: bool = False) -> None:
    request = REQUEST_TYPES["traces"]()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=trace_id, span_id=trace_id[:8], name="reco.generate", start_time_unix_nano=1, end_time_unix_nano=2)
    span.attributes.extend(attributes)
    if error:
        span.status.code = 2
    with grpc.insecure_channel(hop.endpoint) as channel:
        channel.unary_unary(METHOD_PATHS["traces"])(request.SerializeToString(), timeout=10)


def arrived(sink: CaptureServer, trace_id: bytes) -> list:
    return [s for s in sink.spans() if s.trace_id == trace_id]


def start(start_hop, downstream: CaptureServer, tmp_path: Path) -> tuple[HopProcess, Path]:  # noqa: ANN001
    """The hop on CONFIG, its rule files written first next to where start_hop puts the config (hop0/)."""
    work = tmp_path / "hop0"
    work.mkdir()
    (work / "policies.yaml").write_text(POLICIES)
    (work / "redaction.yaml").write_text(REDACTION)
    return start_hop(CONFIG.format(downstream=downstream.endpoint), env=KEY), work


def test_sighup_reloads_rules_and_hands_over_buffered_traces(start_hop, downstream: CaptureServer,
                                                             tmp_path: Path) -> None:
    hop, work = start(start_hop, downstream, tmp_path)

    buffered = b"\x01" * 16  # an error trace, buffered for 60 s: the reload must not lose it
    send_trace(hop, buffered, [kv("user.id", "u1"), kv("note", "n")], error=True)
    assert arrived(downstream, buffered) == []

    # New rules: also drop `note`, and keep fallback traces under a new policy name.
    (work / "redaction.yaml").write_text(REDACTION + "  - {key: note, action: drop}\n")
    (work / "policies.yaml").write_text(POLICIES.replace("name: fallback", "name: fallback-v2"))
    hop.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(hop, 'recohop_config_reloads_total{result="ok"}') == 1, "the reload counted ok",
               seen=lambda: hop.log()[-1500:])
    # The buffered trace was handed over at the reload (decided, as at shutdown), with the old rules' output.
    wait_until(lambda: arrived(downstream, buffered), "the buffered error trace delivered at the reload")
    (old_span,) = arrived(downstream, buffered)
    assert {a.key for a in old_span.attributes} >= {"note"} and "user.id" not in {a.key for a in old_span.attributes}

    fresh = b"\x02" * 16
    send_trace(hop, fresh, [kv("user.id", "u2"), kv("note", "n"), kv("reco.fallback", True)])
    assert hop.terminate() == 0
    (new_span,) = arrived(downstream, fresh)
    keys = {a.key for a in new_span.attributes}
    assert "note" not in keys and "user.id" not in keys  # the reloaded redaction rules ran
    policy = {a.value.string_value for a in new_span.attributes if a.key == "sampling.policy"}
    assert policy == {"fallback-v2"}, new_span.attributes  # kept under the reloaded policy set
    assert "reloaded" in hop.log()


def test_a_bad_file_keeps_the_running_rules_and_is_counted(start_hop, downstream: CaptureServer,
                                                          tmp_path: Path) -> None:
    hop, work = start(start_hop, downstream, tmp_path)
    (work / "policies.yaml").write_text("policies:\n  - {name: broken, type: no_such_kind}\n")
    hop.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(hop, 'recohop_config_reloads_total{result="failed"}') == 1,
               "the failed reload counted", seen=lambda: hop.log()[-1500:])
    assert "policies.yaml" in hop.log() and "reload refused" in hop.log()
    assert metric(hop, 'recohop_config_reloads_total{result="ok"}') == 0
    trace = b"\x03" * 16
    send_trace(hop, trace, [kv("user.id", "u3")], error=True)  # still served, by the old rules
    assert hop.terminate() == 0
    (span,) = arrived(downstream, trace)
    assert "user.id" not in {a.key for a in span.attributes}


def test_sigterm_drains_before_closing(start_hop, downstream: CaptureServer) -> None:
    hop = start_hop("receiver:\n  drain_window: 3s\nexporter:\n  endpoint: " + downstream.endpoint + "\npipeline: []\n")
    hop.proc.send_signal(signal.SIGTERM)
    with grpc.insecure_channel(hop.endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                   == health_pb2.HealthCheckResponse.NOT_SERVING, "health NOT_SERVING after SIGTERM", timeout=5)
    trace = b"\x04" * 16
    send_trace(hop, trace, [])  # accepted during the drain window
    assert hop.proc.wait(30) == 0
    assert len(arrived(downstream, trace)) == 1
