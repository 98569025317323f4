"""Downstream down then up: nothing lost within the queue budget; a full queue pushes back."""

from __future__ import annotations

import threading

import grpc
from sdk_clients import send_spans
from test_hop_bad_input import call
from test_hop_passthrough import wait_until

from processor.signals import REQUEST_TYPES

OUTAGE_CONFIG = """
exporter:
  endpoint: {downstream}
  timeout: 2s
  queue: {{max_bytes: {queue}, consumers: 1}}
  retry: {{initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 5m}}
shutdown_timeout: 3s
pipeline: []
"""


def test_outage_then_recovery_loses_nothing(downstream, start_hop) -> None:
    down = threading.Event()
    down.set()
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE if down.is_set() else None
    hop = start_hop(OUTAGE_CONFIG.format(downstream=downstream.endpoint, queue="16MiB"))
    sent = send_spans(hop.endpoint, 400)
    assert downstream.spans() == []
    down.clear()
    wait_until(lambda: len(downstream.spans()) == len(sent), timeout=20)
    assert sorted(s.SerializeToString() for s in downstream.spans()) == sorted(sent)


def test_full_queue_answers_resource_exhausted_with_retry_info(downstream, start_hop) -> None:
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE
    hop = start_hop(OUTAGE_CONFIG.format(downstream=downstream.endpoint, queue="1KiB"))
    request = REQUEST_TYPES["traces"]()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "x" * 2000
    assert call(hop.endpoint, "traces", request.SerializeToString()) == b""  # fills the 1 KiB budget
    error = call(hop.endpoint, "traces", request.SerializeToString())
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    keys = dict(error.trailing_metadata())
    assert "google.rpc.retryinfo-bin" in keys and "grpc-status-details-bin" in keys
