"""SIGTERM: stop accepting, flush what is queued, exit 0."""

from __future__ import annotations

import threading

import grpc
from otlp_peers import wait_until
from sdk_clients import send_spans
from test_exporter_outage import OUTAGE_CONFIG


def test_sigterm_flushes_the_queue(downstream, start_hop) -> None:
    down = threading.Event()
    down.set()
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE if down.is_set() else None
    hop = start_hop(OUTAGE_CONFIG.format(downstream=downstream.endpoint, queue="16MiB"))
    sent = send_spans(hop.endpoint, 200)
    hop.proc.terminate()  # SIGTERM while everything is still queued
    wait_until(lambda: "stopping: flushing" in hop.log(), "the hop to begin its graceful stop",
               seen=lambda: hop.log()[-500:])
    down.clear()  # the next hop recovers only once the stop is under way
    assert hop.proc.wait(30) == 0
    assert sorted(s.SerializeToString() for s in downstream.spans()) == sorted(sent)


def test_default_config_writes_file_sink(start_hop) -> None:
    """Zero config: the whole default pipeline runs and error traces land in the local file sink on SIGTERM."""
    hop = start_hop(None)
    send_spans(hop.endpoint, 20, error=True)
    assert hop.terminate() == 0
    sink = hop.log_path.parent / "recohop-out" / "export.jsonl"
    assert sink.exists(), hop.log()
    assert (sink.stat().st_mode & 0o777) == 0o600
    text = sink.read_text()
    assert text.count('"name": "reco.generate"') == 20
    assert "throwaway" in hop.log().lower()  # the zero-config default warns about its pseudonym key
