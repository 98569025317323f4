"""A CPU-bound hop pushes back itself: beyond `max_pending_requests` admitted requests, the receiver answers
RESOURCE_EXHAUSTED with RetryInfo at once (instead of queueing until gRPC's own concurrency limit refuses
without RetryInfo), counts the refusal, and serves normally once the pipeline catches up."""

from __future__ import annotations

import grpc
from otlp_peers import CaptureServer, wait_until

from processor.config import parse_config
from processor.config_node import Node
from processor.hop import Hop
from processor.retryinfo import retry_delay
from processor.signals import METHOD_PATHS, REQUEST_TYPES


def one_span_request() -> bytes:
    request = REQUEST_TYPES["traces"]()
    request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="x")
    return request.SerializeToString()


def test_requests_beyond_the_pending_limit_get_retry_info_and_the_hop_recovers() -> None:
    sink = CaptureServer().start()
    node = Node({"receiver": {"endpoint": "127.0.0.1:0", "max_pending_requests": 2},
                 "exporter": {"endpoint": sink.endpoint}, "telemetry": {"metrics_endpoint": "off"},
                 "pipeline": [{"type": "passthrough"}]}, "<admission test>")
    hop = Hop(parse_config(node)).start()
    channel = grpc.insecure_channel(hop.endpoint)
    export = channel.unary_unary(METHOD_PATHS["traces"])
    body = one_span_request()
    try:
        hop.pipeline.gate.close()  # the pipeline is busy: admitted requests wait
        waiting = [export.future(body, timeout=30) for _ in range(2)]
        wait_until(lambda: hop.admission.pending == 2, "2 requests admitted and waiting", timeout=10,
                   seen=lambda: f"{hop.admission.pending} pending")
        refusals = []
        for _ in range(5):
            try:
                export(body, timeout=10)
            except grpc.RpcError as exc:
                refusals.append(exc)
        assert len(refusals) == 5
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refusals)
        assert all(retry_delay(e) == 0.5 for e in refusals)
        assert hop.metrics.refused_requests.labels("spans")._value.get() == 5
    finally:
        hop.pipeline.gate.open()
    try:
        for future in waiting:
            future.result(timeout=10)
        export(body, timeout=10)  # room again
        sink.wait_for_spans(3, timeout=10)
        assert hop.admission.pending == 0
    finally:
        channel.close()
        hop.stop()
        sink.stop()
