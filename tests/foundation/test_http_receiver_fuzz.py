"""Malformed and mutated OTLP/HTTP bodies: every answer is 200 (a mutation that still parses), 400, 413 or
415, never a 5xx or a dropped connection, and the hop serves valid requests afterwards."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otlp_peers import CaptureServer

from processor import otlpjson
from processor.config import parse_config
from processor.config_node import Node
from processor.hop import Hop
from processor.signals import REQUEST_TYPES

PATHS = ["/v1/traces", "/v1/metrics", "/v1/logs"]


def valid_request() -> bytes:
    request = REQUEST_TYPES["traces"]()
    span = request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8,
                                                                     name="reco.generate")
    span.attributes.add(key="reco.num_results").value.int_value = 3
    span.events.add(name="exception").attributes.add(key="k").value.string_value = "v"
    return request.SerializeToString()


VALID = valid_request()
VALID_JSON = otlpjson.dumps(REQUEST_TYPES["traces"].FromString(VALID)).encode()


@pytest.fixture(scope="module")
def hop() -> Iterator[Hop]:
    sink = CaptureServer().start()
    node = Node({"receiver": {"endpoint": "127.0.0.1:0", "http": {"endpoint": "127.0.0.1:0"},
                              "max_recv_msg_size": "256KiB"},
                 "exporter": {"endpoint": sink.endpoint}, "telemetry": {"metrics_endpoint": "off"},
                 "pipeline": [{"type": "limits"}]}, "<fuzz>")
    hop = Hop(parse_config(node)).start()
    yield hop
    hop.stop(5)
    sink.stop()


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


def exchange(hop: Hop, path: str, body: bytes, content_type: str, encoding: str | None) -> int:
    host, port = hop.http_endpoint.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(["proto", "json", "random"]), random=st.binary(max_size=512),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       cut=st.none() | st.integers(0, 600), path=st.sampled_from(PATHS),
       content_type=st.sampled_from(["application/x-protobuf", "application/json",
                                     "application/json; charset=utf-8", "text/plain"]),
       encoding=st.sampled_from([None, "gzip", "deflate", "gzip-broken"]))
def test_mutated_bodies_never_get_a_server_error(hop: Hop, base: str, random: bytes, flips: list[tuple[int, int]],
                                                 cut: int | None, path: str, content_type: str,
                                                 encoding: str | None) -> None:
    body = {"proto": VALID, "json": VALID_JSON, "random": random}[base]
    body = mutate(body, flips, cut)
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        import zlib

        body = zlib.compress(body)
    elif encoding == "gzip-broken":
        body, encoding = mutate(gzip.compress(body), flips, cut), "gzip"
    status = exchange(hop, path, body, content_type, encoding)
    assert status in (200, 400, 413, 415), status
    if content_type == "text/plain":
        assert status == 415


def test_the_hop_still_serves_after_the_fuzzing(hop: Hop) -> None:
    assert exchange(hop, "/v1/traces", VALID, "application/x-protobuf", None) == 200
    assert exchange(hop, "/v1/traces", VALID_JSON, "application/json", "gzip") == 400  # not gzip at all
    assert exchange(hop, "/v1/traces", gzip.compress(VALID_JSON), "application/json", "gzip") == 200
    assert json.loads(VALID_JSON)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == "01" * 16
