"""Fuzz the receiver over real gRPC: any request body gets OK or INVALID_ARGUMENT, never a crash or
INTERNAL, and the hop keeps serving. Bounded (example count) so it fits in CI."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.config import parse_config
from processor.config_node import Node
from processor.hop import Hop
from processor.signals import METHOD_PATHS, REQUEST_TYPES


def valid_request() -> bytes:
    request = REQUEST_TYPES["traces"]()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = "fuzz"
    span = rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="reco.generate")
    attr = span.attributes.add(key="reco.placement")
    attr.value.string_value = "home"
    return request.SerializeToString()


VALID = valid_request()


@pytest.fixture(scope="module")
def hop_and_sink(tmp_path_factory):
    from otlp_peers import CaptureServer

    sink = CaptureServer().start()
    node = Node({"receiver": {"endpoint": "127.0.0.1:0"}, "exporter": {"endpoint": sink.endpoint},
                 "telemetry": {"metrics_endpoint": "off"}, "pipeline": []}, "<fuzz test>")
    hop = Hop(parse_config(node)).start()
    channel = grpc.insecure_channel(hop.endpoint)
    yield hop, sink, channel
    channel.close()
    hop.stop(5)
    sink.stop()


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf)


body = st.one_of(
    st.binary(max_size=2048),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda flips: mutate(VALID, flips)),
    st.integers(1, len(VALID) - 1).map(lambda n: VALID[:n]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=body, signal=st.sampled_from(["traces", "metrics", "logs"]))
def test_any_body_gets_ok_or_invalid_argument(hop_and_sink, payload: bytes, signal: str) -> None:
    _hop, _sink, channel = hop_and_sink
    try:
        channel.unary_unary(METHOD_PATHS[signal])(payload, timeout=10)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error


def test_still_serving_after_fuzzing(hop_and_sink) -> None:
    _hop, sink, channel = hop_and_sink
    before = len(sink.spans())
    channel.unary_unary(METHOD_PATHS["traces"])(VALID, timeout=10)
    sink.wait_for_spans(before + 1)
