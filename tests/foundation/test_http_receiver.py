"""OTLP/HTTP receiver: the OpenTelemetry Python SDK's HTTP exporters (protobuf, gzip), OTLP/JSON, the spec's
status codes with google.rpc.Status bodies, Retry-After under backpressure, partial success, bearer token,
TLS and mutual TLS, CORS, and a stop that finishes the requests in flight."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import make_pki
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from otlp_peers import CaptureServer, free_port, wait_until

from processor import otlpjson
from processor.config import apply_overrides, load_config, parse_config
from processor.config_node import Node
from processor.hop import Hop
from processor.signals import REQUEST_TYPES, RESPONSE_TYPES

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@pytest.fixture
def make_hop(downstream: CaptureServer) -> Iterator[Callable[..., Hop]]:
    """`make_hop(receiver={...}, pipeline=[...], exporter={...})` → a started in-process hop with OTLP/HTTP on
    a free port, exporting to `downstream`."""
    hops: list[Hop] = []

    def make(receiver: dict[str, Any] | None = None, pipeline: list[dict[str, Any]] | None = None,
             exporter: dict[str, Any] | None = None) -> Hop:
        node = Node({"receiver": {"endpoint": "127.0.0.1:0", "http": {"endpoint": "127.0.0.1:0"}, **(receiver or {})},
                     "exporter": {"endpoint": downstream.endpoint, **(exporter or {})},
                     "telemetry": {"metrics_endpoint": "off"},
                     "pipeline": pipeline if pipeline is not None else [{"type": "passthrough"}]}, "<http test>")
        hop = Hop(parse_config(node)).start()
        hops.append(hop)
        return hop

    make.hops = hops  # type: ignore[attr-defined]
    yield make
    for hop in hops:
        hop.stop(5)


def span_request(*trace_ids: bytes, name: str = "x") -> Any:
    request = REQUEST_TYPES["traces"]()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i, trace_id in enumerate(trace_ids or (b"\x01" * 16,)):
        spans.add(trace_id=trace_id, span_id=bytes([i + 1]) * 8, name=name)
    return request


def post(endpoint: str, path: str, body: bytes, content_type: str | None = PROTOBUF,
         headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None,
         method: str = "POST") -> tuple[int, http.client.HTTPMessage, bytes]:
    host, port = endpoint.rsplit(":", 1)
    conn = (http.client.HTTPSConnection(host, int(port), timeout=15, context=context) if context
            else http.client.HTTPConnection(host, int(port), timeout=15))
    try:
        all_headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def refuses_connections(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def decode_status(body: bytes, content_type: str) -> status_pb2.Status:
    if content_type == JSON:
        from google.protobuf import json_format

        return json_format.Parse(body, status_pb2.Status())
    return status_pb2.Status.FromString(body)


def retry_info(status: status_pb2.Status) -> float | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def sdk_tracer(endpoint: str, gzip_body: bool = False, **kwargs: Any) -> tuple[TracerProvider, OTLPSpanExporter]:
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=10,
                                compression=Compression.Gzip if gzip_body else Compression.NoCompression, **kwargs)
    provider = TracerProvider(resource=Resource.create({"service.name": "py-http"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def send_sdk_spans(endpoint: str, count: int, gzip_body: bool = False, **kwargs: Any) -> list[str]:
    provider, _ = sdk_tracer(endpoint, gzip_body, **kwargs)
    tracer = provider.get_tracer("recohop.tests.http")
    names = [f"reco.generate-{i}" for i in range(count)]
    for name in names:
        with tracer.start_as_current_span(name) as span:
            span.set_attribute("reco.num_results", 3)
    provider.shutdown()
    return names


@pytest.mark.parametrize("gzip_body", [False, True], ids=["plain", "gzip"])
def test_python_sdk_http_exporters_deliver_traces_metrics_and_logs(make_hop, downstream, gzip_body: bool) -> None:
    hop = make_hop()
    base = f"http://{hop.http_endpoint}"
    names = send_sdk_spans(base, 5, gzip_body)
    compression = Compression.Gzip if gzip_body else Compression.NoCompression
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{base}/v1/metrics",
                                                              compression=compression),
                                           export_interval_millis=60_000)
    meters = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "m"}))
    meters.get_meter("t").create_counter("reco.requests").add(4, {"reco.placement": "home"})
    meters.shutdown()
    logs = LoggerProvider(resource=Resource.create({"service.name": "l"}))
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{base}/v1/logs",
                                                                           compression=compression)))
    from opentelemetry._logs import LogRecord, SeverityNumber

    for i in range(3):
        logs.get_logger("t").emit(LogRecord(body=f"line {i}", severity_number=SeverityNumber.WARN))
    logs.shutdown()

    downstream.wait_for_spans(5)
    assert sorted(s.name for s in downstream.spans()) == sorted(names)
    # The hop's exporter may send queued requests of one signal together: count records, not requests.

    def log_bodies() -> list[str]:
        return [record.body.string_value for request in downstream.requests("logs")
                for resource in request.resource_logs for scope in resource.scope_logs for record in scope.log_records]

    wait_until(lambda: downstream.requests("metrics") and len(log_bodies()) == 3,
               "the metrics request and 3 log records downstream",
               seen=lambda: {"metrics requests": len(downstream.requests("metrics")), "log records": log_bodies(),
                             "hop received": {s: hop.metrics.received.labels(s)._value.get()
                                              for s in ("spans", "metric_points", "log_records")}})
    metric = downstream.requests("metrics")[0].resource_metrics[0].scope_metrics[0].metrics[0]
    assert metric.name == "reco.requests" and metric.sum.data_points[0].as_int == 4
    bodies = log_bodies()
    assert sorted(bodies) == ["line 0", "line 1", "line 2"]
    assert hop.metrics.received.labels("spans")._value.get() == 5
    assert hop.metrics.received.labels("log_records")._value.get() == 3


def test_otlp_json_is_read_with_hex_ids_integer_enums_and_unknown_fields(make_hop, downstream) -> None:
    hop = make_hop()
    request = span_request(bytes.fromhex("5b8efff798038103d269b633813fc60c"))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.kind, span.status.code, span.start_time_unix_nano = 2, 2, 1_700_000_000_123_456_789
    span.attributes.add(key="reco.num_results").value.int_value = 2**62
    tree = otlpjson.to_tree(request)
    json_span = tree["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert json_span["traceId"] == "5b8efff798038103d269b633813fc60c" and json_span["kind"] == 2
    json_span["aFieldFromANewerProto"] = {"x": 1}  # receivers must skip unknown fields
    json_span["startTimeUnixNano"] = 1_700_000_000_123_456_789  # 64-bit ints as numbers are accepted too
    status, headers, body = post(hop.http_endpoint, "/v1/traces", json.dumps(tree).encode(), JSON)
    assert (status, headers["Content-Type"], json.loads(body)) == (200, JSON, {})
    downstream.wait_for_spans(1)
    assert downstream.spans()[0] == span


def test_partial_success_is_answered_in_the_request_encoding(make_hop, downstream) -> None:
    hop = make_hop(pipeline=[{"type": "limits"}])
    request = span_request(b"\x01" * 16, b"\x00" * 16, b"\x02" * 8)
    status, _, body = post(hop.http_endpoint, "/v1/traces", request.SerializeToString(), PROTOBUF)
    response = RESPONSE_TYPES["traces"].FromString(body)
    assert status == 200 and response.partial_success.rejected_spans == 2
    assert "trace id" in response.partial_success.error_message
    status, headers, body = post(hop.http_endpoint, "/v1/traces", otlpjson.dumps(request).encode(), JSON)
    assert status == 200 and headers["Content-Type"] == JSON
    assert json.loads(body)["partialSuccess"]["rejectedSpans"] in ("2", 2)
    downstream.wait_for_spans(2)


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_bad_payloads_get_400_with_a_status_body_and_the_hop_keeps_serving(make_hop, downstream,
                                                                           content_type: str) -> None:
    hop = make_hop()
    bodies = [b"\xff\xff\xff\xff", b"{not json", b'{"resourceSpans": 3}', b'[1, 2]',
              b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}',
              b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 12}]}]}]}',
              span_request().SerializeToString()[:-3],
              b"[" * 5000 + b"]" * 5000]
    for raw in bodies:
        if (content_type == PROTOBUF) == raw.startswith((b"{", b"[")):
            continue  # each encoding gets its own bad bodies (some JSON text happens to be valid protobuf)
        status, headers, body = post(hop.http_endpoint, "/v1/traces", raw, content_type)
        assert status == 400, raw[:40]
        assert headers["Content-Type"] == content_type
        reply = decode_status(body, content_type)
        assert reply.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert reply.message.startswith("malformed OTLP traces request")
    good = span_request()
    encoded = good.SerializeToString() if content_type == PROTOBUF else otlpjson.dumps(good).encode()
    assert post(hop.http_endpoint, "/v1/traces", encoded, content_type)[0] == 200
    downstream.wait_for_spans(1)
    assert hop.metrics.refused.labels("spans", "malformed")._value.get() >= 1


def test_transport_errors_get_the_specs_status_codes(make_hop) -> None:
    hop = make_hop(receiver={"max_recv_msg_size": "64KiB"})
    ok = span_request().SerializeToString()
    ep = hop.http_endpoint
    assert post(ep, "/v1/traces", ok, "text/plain")[0] == 415
    assert post(ep, "/v1/traces", ok, None)[0] == 415
    assert post(ep, "/v1/traces", ok, PROTOBUF, {"Content-Encoding": "br"})[0] == 415
    assert post(ep, "/v1/spans", ok)[0] == 404
    status, headers, _ = post(ep, "/v1/traces", b"", None, method="GET")
    assert status == 405 and headers["Allow"] == "POST"
    too_big = b"\x00" * (64 * 1024 + 1)
    status, headers, body = post(ep, "/v1/traces", too_big)
    assert status == 413 and status_pb2.Status.FromString(body).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    bomb = gzip.compress(b"\x00" * (10 << 20))  # 10 KiB on the wire, 10 MiB inflated
    assert len(bomb) < 64 * 1024
    assert post(ep, "/v1/traces", bomb, PROTOBUF, {"Content-Encoding": "gzip"})[0] == 413
    assert post(ep, "/v1/traces", b"not gzip", PROTOBUF, {"Content-Encoding": "gzip"})[0] == 400
    assert post(ep, "/v1/traces", gzip.compress(ok)[:-6], PROTOBUF, {"Content-Encoding": "gzip"})[0] == 400
    # Two gzip members are one body, as gzip(1) reads them.
    two = gzip.compress(ok[:5]) + gzip.compress(ok[5:])
    assert post(ep, "/v1/traces", two, PROTOBUF, {"Content-Encoding": "gzip"})[0] == 200


def raw_exchange(endpoint: str, payload: bytes) -> bytes:
    """Send bytes as they are (for framing http.client would not produce) and read the reply."""
    host, port = endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_chunked_bodies_and_missing_length(make_hop, downstream) -> None:
    hop = make_hop()
    body = gzip.compress(span_request().SerializeToString())
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    head = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    assert raw_exchange(hop.http_endpoint, head + chunked).startswith(b"HTTP/1.1 200 ")
    downstream.wait_for_spans(1)
    bad = head + b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    assert raw_exchange(hop.http_endpoint, bad).startswith(b"HTTP/1.1 400 ")
    no_length = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\r\n"
    assert raw_exchange(hop.http_endpoint, no_length).startswith(b"HTTP/1.1 411 ")
    # A request line the server cannot read (here: a TLS hello) gets a bare 400 (no version to answer in).
    assert raw_exchange(hop.http_endpoint, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"400 ")


def test_keep_alive_connection_carries_many_requests(make_hop, downstream) -> None:
    hop = make_hop()
    host, port = hop.http_endpoint.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for i in range(20):
            conn.request("POST", "/v1/traces", span_request(bytes([i + 1]) * 16).SerializeToString(),
                         {"Content-Type": PROTOBUF})
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b""
    finally:
        conn.close()
    downstream.wait_for_spans(20)


def test_overload_gets_429_with_retry_after_and_the_sdk_retries(make_hop, downstream) -> None:
    hop = make_hop(receiver={"max_pending_requests": 1})
    body = span_request().SerializeToString()
    pool = ThreadPoolExecutor(2)
    hop.pipeline.gate.close()  # the pipeline is busy (reloading): the admitted request waits
    try:
        waiting = pool.submit(post, hop.http_endpoint, "/v1/traces", body)
        wait_until(lambda: hop.admission.pending == 1, "one request admitted and waiting")
        status, headers, reply = post(hop.http_endpoint, "/v1/traces", body)
        assert status == 429 and headers["Retry-After"] == "1"
        refusal = status_pb2.Status.FromString(reply)
        assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and retry_info(refusal) == 0.5
        status, _, reply = post(hop.http_endpoint, "/v1/traces", otlpjson.dumps(span_request()).encode(), JSON)
        assert status == 429 and retry_info(decode_status(reply, JSON)) == 0.5
        # The SDK exporter is refused too, waits Retry-After and tries again once the pipeline is free.
        refused_before = hop.metrics.refused_requests.labels("spans")._value.get()
        sdk = pool.submit(send_sdk_spans, f"http://{hop.http_endpoint}", 1)
        wait_until(lambda: hop.metrics.refused_requests.labels("spans")._value.get() > refused_before,
                   "the SDK's first attempt refused")
    finally:
        hop.pipeline.gate.open()
    assert waiting.result(timeout=10)[0] == 200
    sdk.result(timeout=20)
    downstream.wait_for_spans(2)
    pool.shutdown()


def test_full_export_queue_gets_503_with_retry_after(make_hop, downstream) -> None:
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE
    hop = make_hop(exporter={"queue": {"max_bytes": "1KiB"}, "retry": {"initial_interval": "50ms"}})
    body = span_request(b"\x01" * 16, name="x" * 2000).SerializeToString()
    assert post(hop.http_endpoint, "/v1/traces", body)[0] == 200  # queued (over budget by one request)
    status, headers, reply = post(hop.http_endpoint, "/v1/traces", body)
    assert status == 503 and headers["Retry-After"] == "1" and headers["Connection"] == "close"
    assert retry_info(status_pb2.Status.FromString(reply)) == 1.0
    downstream.fail_with = None
    downstream.wait_for_spans(1)
    wait_until(lambda: post(hop.http_endpoint, "/v1/traces", body)[0] == 200, "room again")
    downstream.wait_for_spans(2)


def test_bearer_token(make_hop, downstream, monkeypatch) -> None:
    monkeypatch.setenv("TEST_HTTP_TOKEN", "s3cret-token")
    hop = make_hop(receiver={"auth": {"bearer_token_env": "TEST_HTTP_TOKEN"}})
    body = span_request().SerializeToString()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        status, reply_headers, reply = post(hop.http_endpoint, "/v1/traces", body, PROTOBUF, headers)
        assert status == 401 and reply_headers["WWW-Authenticate"] == "Bearer"
        assert status_pb2.Status.FromString(reply).code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert send_sdk_spans(f"http://{hop.http_endpoint}", 2, headers={"authorization": "Bearer s3cret-token"})
    downstream.wait_for_spans(2)
    assert hop.metrics.refused.labels("spans", "unauthenticated")._value.get() == 3


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_and_mutual_tls(tmp_path: Path, make_hop, downstream, monkeypatch, mutual: bool) -> None:
    # requests lets these variables override the exporter's own CA file (session.verify).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    pki = make_pki(tmp_path)
    hop = make_hop(receiver={"tls": {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
                                     "ca_file": str(pki["ca"]), "client_auth": mutual}})
    client_files = {"client_certificate_file": str(pki["client_cert"]), "client_key_file": str(pki["client_key"])}
    send_sdk_spans(f"https://{hop.http_endpoint}", 2, certificate_file=str(pki["ca"]), **client_files)
    downstream.wait_for_spans(2)
    body = span_request(b"\x09" * 16).SerializeToString()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        post(hop.http_endpoint, "/v1/traces", body)  # plaintext to a TLS port
    no_client_cert = ssl.create_default_context(cafile=str(pki["ca"]))
    if mutual:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            post(hop.http_endpoint, "/v1/traces", body, context=no_client_cert)
    else:
        assert post(hop.http_endpoint, "/v1/traces", body, context=no_client_cert)[0] == 200
        downstream.wait_for_spans(3)


def test_cors_for_browsers(make_hop) -> None:
    hop = make_hop(receiver={"http": {"endpoint": "127.0.0.1:0",
                                      "cors": {"allowed_origins": ["https://*.example.com"], "max_age": "10m"}}})
    preflight = {"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    status, headers, _ = post(hop.http_endpoint, "/v1/traces", b"", None, preflight, method="OPTIONS")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert headers["Access-Control-Allow-Methods"] == "POST" and headers["Access-Control-Max-Age"] == "600"
    assert "Content-Type" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = post(hop.http_endpoint, "/v1/traces", b"", None, {**preflight, "Origin": "https://evil.test"},
                              method="OPTIONS")
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = post(hop.http_endpoint, "/v1/traces", otlpjson.dumps(span_request()).encode(), JSON,
                              {"Origin": "https://shop.example.com"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://shop.example.com"


def test_stop_finishes_requests_in_flight_and_refuses_new_ones(make_hop, downstream) -> None:
    hop = make_hop()
    make_hop.hops.remove(hop)  # stopped here
    assert hop.http is not None
    pool = ThreadPoolExecutor(2)
    hop.pipeline.gate.close()
    try:
        in_flight = pool.submit(post, hop.http_endpoint, "/v1/traces", span_request().SerializeToString())
        wait_until(lambda: hop.admission.pending == 1, "one request in flight")
        stopped = pool.submit(hop.stop, 10)
        wait_until(lambda: hop.http.stopping, "the HTTP receiver stopping")
        wait_until(lambda: refuses_connections(hop.http_endpoint), "the HTTP listener closed (right after the flag)")
        with pytest.raises(OSError):
            post(hop.http_endpoint, "/v1/traces", span_request().SerializeToString())
    finally:
        hop.pipeline.gate.open()
    assert in_flight.result(timeout=10)[0] == 200
    assert stopped.result(timeout=15) is True
    downstream.wait_for_spans(1)
    pool.shutdown()


def test_zero_config_default_listens_on_4318_or_warns_when_taken(tmp_path: Path, caplog) -> None:
    """The built-in default serves OTLP/HTTP on 127.0.0.1:4318; when that port is taken (another collector)
    it says so and serves gRPC alone, while an explicit --http-listen on a taken port is an error."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 4318))
        holder.listen()
    except OSError:
        pass  # something else holds it already: taken either way
    try:
        cfg = load_config(None)
        assert cfg.receiver.http is not None and cfg.receiver.http.endpoint == "127.0.0.1:4318"
        cfg.receiver.endpoint = "127.0.0.1:0"
        cfg.telemetry.metrics_endpoint = None
        cfg.exporter.file.path = tmp_path / "export.jsonl"
        hop = Hop(cfg)
        try:
            assert hop.http is None
            assert any("OTLP/HTTP receiver off" in r.getMessage() for r in caplog.records)
        finally:
            hop.server.stop(0)
        explicit = apply_overrides(load_config(None), listen="127.0.0.1:0", http_listen="127.0.0.1:4318")
        explicit.telemetry.metrics_endpoint = None
        explicit.exporter.file.path = tmp_path / "export.jsonl"
        with pytest.raises(OSError, match="receiver.http.endpoint"):
            Hop(explicit)
    finally:
        holder.close()
    assert apply_overrides(load_config(None), http_listen="off").receiver.http is None


def test_serve_http_listen_in_a_real_process(start_hop, downstream) -> None:
    """`recohop serve --http-listen` wires the receiver in; JSON logs name the endpoint."""
    port = free_port()
    hop = start_hop(f"exporter: {{endpoint: {downstream.endpoint}}}\ntelemetry: {{log_format: json}}\n",
                    extra_args=["--http-listen", f"127.0.0.1:{port}"])
    send_sdk_spans(f"http://127.0.0.1:{port}", 3, gzip_body=True)
    downstream.wait_for_spans(3)
    assert hop.terminate() == 0
    entries = [json.loads(line) for line in hop.log().splitlines() if line.startswith("{")]
    started = [e for e in entries if e["message"].startswith("recohop listening")]
    assert started and started[0]["fields"]["http_endpoint"] == f"127.0.0.1:{port}"


def test_http_and_grpc_share_one_admission(make_hop, downstream) -> None:
    hop = make_hop(receiver={"max_pending_requests": 1})
    hop.pipeline.gate.close()
    pool = ThreadPoolExecutor(1)
    try:
        waiting = pool.submit(post, hop.http_endpoint, "/v1/traces", span_request().SerializeToString())
        wait_until(lambda: hop.admission.pending == 1, "the HTTP request admitted")
        with grpc.insecure_channel(hop.endpoint) as channel:
            from processor.signals import METHOD_PATHS

            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(METHOD_PATHS["traces"])(span_request().SerializeToString(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        hop.pipeline.gate.open()
    assert waiting.result(timeout=10)[0] == 200
    downstream.wait_for_spans(1)
    pool.shutdown()


def test_connection_slots_are_bounded(make_hop, downstream) -> None:
    """Idle connections beyond workers * 8 are closed at once instead of each holding a thread."""
    hop = make_hop(receiver={"workers": 1})
    host, port = hop.http_endpoint.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        extra = socket.create_connection((host, int(port)), timeout=5)
        assert extra.recv(1) == b""  # closed by the server
        extra.close()
    finally:
        for sock in idle:
            sock.close()

    def accepted() -> bool:  # until the idle connections' threads have seen them close, new ones are refused
        try:
            return post(hop.http_endpoint, "/v1/traces", span_request().SerializeToString())[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    wait_until(accepted, "a slot free again")
    downstream.wait_for_spans(1)


def test_requests_are_not_echoed_into_the_log(make_hop, caplog) -> None:
    hop = make_hop()
    secret = "jane.doe@example.com"
    request = span_request()
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="user.email").value.string_value = secret
    tree = otlpjson.to_tree(request)
    tree["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"] = {"v": secret}  # invalid: 400
    with caplog.at_level("DEBUG"):
        status, _, _ = post(hop.http_endpoint, "/v1/traces", json.dumps(tree).encode(), JSON)
        assert status == 400
        assert post(hop.http_endpoint, "/v1/traces", b"\x0a\xff" + secret.encode(), PROTOBUF)[0] == 400
    assert caplog.records
    assert all(secret not in record.getMessage() for record in caplog.records)
