"""Bad input gets the proper gRPC status, and the hop keeps serving everyone else."""

from __future__ import annotations

import grpc
import pytest
from sdk_clients import send_spans
from test_hop_passthrough import PASSTHROUGH

from processor.signals import METHOD_PATHS


def call(endpoint: str, signal: str, payload: bytes) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", -1)]) as channel:
        try:
            return channel.unary_unary(METHOD_PATHS[signal])(payload, timeout=10)
        except grpc.RpcError as error:
            return error


@pytest.fixture
def hop(downstream, start_hop):
    return start_hop(PASSTHROUGH.format(downstream=downstream.endpoint))


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
def test_malformed_body_is_invalid_argument_and_server_keeps_serving(hop, downstream, signal) -> None:
    error = call(hop.endpoint, signal, b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in error.details()
    sent = send_spans(hop.endpoint, 50)
    downstream.wait_for_spans(len(sent))


def test_oversize_message_is_resource_exhausted(hop, downstream) -> None:
    payload = b"\x0a" + b"\x80\x80\x80\x03" + b"\x00" * (6 << 20)  # a 6 MiB body, over the 4 MiB default
    error = call(hop.endpoint, "traces", payload)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    sent = send_spans(hop.endpoint, 10)
    downstream.wait_for_spans(len(sent))


def test_refusals_are_counted_on_metrics(hop) -> None:
    call(hop.endpoint, "traces", b"\xff\xff")
    import urllib.request

    text = urllib.request.urlopen(hop.metrics_url, timeout=5).read().decode()
    assert 'recohop_refused_items_total{reason="malformed",signal="spans"} 1.0' in text


def test_health_service_reports_serving(hop) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(hop.endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "opentelemetry.proto.collector.trace.v1.TraceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_failing_stage_costs_one_request_and_logs_no_values(caplog) -> None:
    """A stage bug: that request gets INTERNAL, the hop keeps serving, the log names no attribute value."""
    from otlp_peers import CaptureServer

    from processor.config import parse_config
    from processor.config_node import Node
    from processor.hop import Hop
    from processor.signals import REQUEST_TYPES

    sink = CaptureServer().start()
    node = Node({"receiver": {"endpoint": "127.0.0.1:0"}, "exporter": {"endpoint": sink.endpoint},
                 "telemetry": {"metrics_endpoint": "off"}, "pipeline": [{"type": "passthrough"}]}, "<test>")
    hop = Hop(parse_config(node)).start()
    stage = hop.pipeline.stages[0]
    secret = "jane.doe@example.com"

    def broken(request):  # noqa: ANN001, ANN202
        if any(kv.value.string_value == secret for rs in request.resource_spans for ss in rs.scope_spans
               for span in ss.spans for kv in span.attributes):
            raise ValueError(f"cannot handle {secret}")
        return [request]

    stage.on_traces = broken
    try:
        request = REQUEST_TYPES["traces"]()
        span = request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
        span.attributes.add(key="user.email").value.string_value = secret
        error = call(hop.endpoint, "traces", request.SerializeToString())
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INTERNAL
        assert secret not in error.details()
        assert all(secret not in record.getMessage() for record in caplog.records)
        sent = send_spans(hop.endpoint, 5)
        sink.wait_for_spans(len(sent))
    finally:
        hop.stop(5)
        sink.stop()


def test_anyvalue_nested_1000_deep_is_invalid_argument(hop, downstream) -> None:
    """protobuf's parser refuses nesting past its recursion limit (100), before any stage walks it."""
    from processor.signals import REQUEST_TYPES

    request = REQUEST_TYPES["traces"]()
    span = request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    value = span.attributes.add(key="deep").value
    for _ in range(1000):
        value = value.kvlist_value.values.add(key="k").value
    value.string_value = "bottom"
    error = call(hop.endpoint, "traces", request.SerializeToString())
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    sent = send_spans(hop.endpoint, 5)
    downstream.wait_for_spans(len(sent))
