"""Downstream down then up: nothing lost within the queue budget; a full queue pushes back."""

from __future__ import annotations

import threading

import grpc
from otlp_peers import wait_until
from sdk_clients import send_spans
from test_hop_bad_input import call

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
    downstream.wait_for_spans(len(sent))
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


def metric_value(metrics_url: str, line_prefix: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line_prefix))


def test_invalid_argument_is_not_retried_and_is_counted(downstream, start_hop) -> None:
    downstream.fail_with = lambda _signal: grpc.StatusCode.INVALID_ARGUMENT
    hop = start_hop(OUTAGE_CONFIG.format(downstream=downstream.endpoint, queue="16MiB"))
    sent = send_spans(hop.endpoint, 40)
    failed = 'recohop_export_failed_items_total{reason="invalid_argument",signal="spans"}'
    wait_until(lambda: metric_value(hop.metrics_url, failed) == len(sent), f"{len(sent)} spans counted {failed}",
               seen=lambda: metric_value(hop.metrics_url, failed))
    assert metric_value(hop.metrics_url, "recohop_export_retries_total") == 0


def test_partial_success_from_next_hop_is_counted(downstream, start_hop) -> None:
    from processor.signals import RESPONSE_TYPES

    def half_rejected(signal: str, raw: bytes) -> bytes:
        request = REQUEST_TYPES[signal].FromString(raw)
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        response = RESPONSE_TYPES[signal]()
        response.partial_success.rejected_spans = spans // 2
        response.partial_success.error_message = "test peer keeps half"
        return response.SerializeToString()

    downstream.respond_with = half_rejected
    hop = start_hop(OUTAGE_CONFIG.format(downstream=downstream.endpoint, queue="16MiB"))
    sent = send_spans(hop.endpoint, 100)
    downstream.wait_for_spans(len(sent))
    rejected = metric_value(hop.metrics_url, "recohop_export_partial_rejected_items_total")
    exported = metric_value(hop.metrics_url, 'recohop_exported_items_total{signal="spans"}')
    assert 0 < rejected <= len(sent) // 2 + len(downstream.raw["traces"])
    assert rejected + exported == len(sent)
