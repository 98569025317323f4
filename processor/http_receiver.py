"""OTLP/HTTP receiver: POST /v1/traces, /v1/metrics and /v1/logs, the encoding most OpenTelemetry SDKs
default to (`http/protobuf`, port 4318) and the one browsers use (OTLP/JSON).

The HTTP side only reads the body, undoes gzip/deflate and picks the decoder for the content type; everything
that decides about the request (bearer token, export-queue room, admission, parsing, the pipeline, partial
success) is the gRPC receiver's `ExportHandler`, so both transports refuse, count and forward alike. Refusals
map to the status codes of the OTLP/HTTP spec: 400 with a google.rpc.Status body for a bad payload, 413 for
too large, 429 (hop overloaded) or 503 (export queue full, stopping) with Retry-After, 415 for other content
types and encodings, 401 for a missing or wrong token. A partial success is a 200 whose body says how many
items were rejected, encoded like the request.

The standard library's ThreadingHTTPServer serves it: one thread per connection, at most `workers * 8`
connections at once (as the gRPC server's concurrent RPCs); the admission limit bounds the CPU work as on gRPC.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import ssl
import threading
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from processor import otlpjson
from processor.config import HttpReceiverConfig, ReceiverConfig, TlsConfig
from processor.receiver import Decoder, ExportHandler, Refused
from processor.retryinfo import STATUS_DETAILS_KEY, retry_status
from processor.signals import REQUEST_TYPES, RESPONSE_TYPES, SIGNALS
from processor.telemetry import split_endpoint

log = logging.getLogger("recohop.receiver.http")

PATHS = {f"/v1/{signal}": signal for signal in SIGNALS}
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
HTTP_STATUS = {
    "unauthenticated": HTTPStatus.UNAUTHORIZED,
    "queue_full": HTTPStatus.SERVICE_UNAVAILABLE,  # the next hop is not taking data: come back later
    "overloaded": HTTPStatus.TOO_MANY_REQUESTS,
    "backpressure": HTTPStatus.TOO_MANY_REQUESTS,
    "malformed": HTTPStatus.BAD_REQUEST,
    "rejected": HTTPStatus.BAD_REQUEST,
    "internal": HTTPStatus.INTERNAL_SERVER_ERROR,
}
# google.rpc.Code values of the Status bodies.
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE = (grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                                     grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                                     grpc.StatusCode.UNAVAILABLE.value[0])
STOPPING_RETRY_AFTER = 1.0
# Keep-alive connections idle this long (or a body read stalled this long) are closed.
IDLE_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate = zlib format (RFC 9110)
CORS_HEADERS = "Content-Type, Content-Encoding, Authorization"


class HttpError(Exception):
    """A request refused before it reached the ExportHandler (transport-level problems)."""

    def __init__(self, status: HTTPStatus, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # The body was not read: the connection cannot carry another request.
        self.close = close


def json_decoder(signal: str) -> Decoder:
    """OTLP/JSON (hex ids, integer enums; unknown fields skipped, as the spec asks of receivers)."""
    request_type = REQUEST_TYPES[signal]

    def decode(body: bytes) -> Message:
        try:
            return otlpjson.loads(body, request_type(), ignore_unknown_fields=True)
        except RecursionError:
            raise DecodeError("JSON nested too deeply") from None
        except Exception as exc:  # whatever the JSON parser or the mapping raises, the body is not a request
            raise DecodeError(_short(str(exc)) or type(exc).__name__) from None

    return decode


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding, at most `limit` bytes (more: 413, so a small gzip bomb costs
    nothing). Concatenated gzip members are read as one body, like gzip(1) does."""
    out = bytearray()
    data = body
    while data:
        inflater = zlib.decompressobj(_DECOMPRESSORS[encoding])
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"body is not valid {encoding}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"decompressed body larger than {limit} bytes")
        if not inflater.eof:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{encoding} body is truncated")
        data = inflater.unused_data if encoding == "gzip" else b""
    return bytes(out)


def error_status(code: int, message: str, retry_after: float | None) -> status_pb2.Status:
    """The google.rpc.Status body of an error response; RetryInfo in its details when there is a delay (the
    same Status the gRPC receiver sends in `grpc-status-details-bin`)."""
    if retry_after is None:
        return status_pb2.Status(code=code, message=message)
    grpc_code = next(c for c in grpc.StatusCode if c.value[0] == code)
    trailers = dict(retry_status(grpc_code, message, retry_after).trailing_metadata)
    return status_pb2.Status.FromString(trailers[STATUS_DETAILS_KEY])


def _origin_pattern(origin: str) -> re.Pattern[str]:
    return re.compile(".*" if origin == "*" else re.escape(origin).replace(r"\*", ".*"))


class OtlpHttpServer(ThreadingHTTPServer):
    """The listening server: connection slots, TLS handshakes in the connection's thread, and a stop that
    waits for the requests in flight."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, cfg: ReceiverConfig, http_cfg: HttpReceiverConfig,
                 handlers: dict[str, ExportHandler]) -> None:
        host, port = split_endpoint(http_cfg.endpoint)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.handlers = handlers
        self.max_body = cfg.max_recv_msg_size
        self.ssl_context = _server_ssl_context(cfg.tls) if cfg.tls is not None and cfg.tls.cert_file else None
        self.cors = [_origin_pattern(o) for o in http_cfg.cors_allowed_origins]
        self.cors_max_age = http_cfg.cors_max_age
        self.decoders: dict[str, Decoder] = {signal: json_decoder(signal) for signal in SIGNALS}
        self._slots = threading.BoundedSemaphore(cfg.workers * 8)
        self._state = threading.Condition()
        self._stopping = False
        self._busy = 0
        self._connections: dict[socket.socket, bool] = {}  # open connection -> serving a request now
        self.serving = False  # serve_forever started (shutdown() would wait forever otherwise)
        super().__init__((host, port), OtlpRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall without DNS; nothing here uses it.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    # Connections --------------------------------------------------------------------------------------------

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            log.debug("OTLP/HTTP connection refused: every connection slot is in use")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        conn = request
        if self.ssl_context is not None:  # handshake here, in the connection's thread, not in the accept loop
            request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("OTLP/HTTP TLS handshake failed (%s)", type(exc).__name__)
                return
        with self._state:
            if self._stopping:
                conn.close()
                return
            self._connections[conn] = False
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            with self._state:
                self._connections.pop(conn, None)
            if conn is not request:
                conn.close()

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away mid-request is not the hop's problem; nothing of the request is logged.
        log.debug("OTLP/HTTP connection ended with an error", exc_info=True)

    # Requests in flight -------------------------------------------------------------------------------------

    def request_started(self, conn: socket.socket) -> bool:
        """False once stopping: the request gets 503 instead of reaching a pipeline that is shutting down."""
        with self._state:
            if self._stopping:
                return False
            self._busy += 1
            self._connections[conn] = True
            return True

    def request_finished(self, conn: socket.socket) -> None:
        with self._state:
            self._busy -= 1
            if conn in self._connections:
                self._connections[conn] = False
            self._state.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def begin_stop(self) -> None:
        """Stop accepting connections; idle keep-alive connections are closed, busy ones after their reply."""
        with self._state:
            self._stopping = True
            idle = [conn for conn, busy in self._connections.items() if not busy]
        for conn in idle:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.serving:
            self.shutdown()
        self.server_close()

    def wait_idle(self, timeout: float) -> bool:
        """Until no request is in flight (they finish their pipeline call and reply), at most `timeout` s."""
        with self._state:
            return self._state.wait_for(lambda: self._busy == 0, timeout)


class OtlpRequestHandler(BaseHTTPRequestHandler):
    """One connection's requests (HTTP/1.1 keep-alive)."""

    server: OtlpHttpServer
    protocol_version = "HTTP/1.1"
    server_version = "recohop"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    # Replies the standard handler writes itself (a request line it cannot read): plain text, not HTML.
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this a small body (a JSON "{}") waits for the
        # client's delayed ACK (~40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler's naming)
        signal = PATHS.get(self.path.split("?", 1)[0])
        content_type = self._content_type()
        if signal is None:
            self._reply_text(HTTPStatus.NOT_FOUND, "not an OTLP path: POST /v1/traces, /v1/metrics or /v1/logs",
                             close=True)
            return
        if not self.server.request_started(self.connection):
            self._reply_status(content_type or PROTOBUF, UNAVAILABLE, "recohop is stopping",
                               HTTPStatus.SERVICE_UNAVAILABLE, STOPPING_RETRY_AFTER, close=True)
            return
        try:
            self._export(signal, content_type)
        finally:
            self.server.request_finished(self.connection)
            if self.server.stopping:
                self.close_connection = True

    def _export(self, signal: str, content_type: str | None) -> None:
        handler = self.server.handlers[signal]
        self._body_unread = True
        if content_type is None:
            self._reply_text(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             f"unsupported content type, expected {PROTOBUF} or {JSON}", close=True)
            return
        try:
            encoding = self._content_encoding()
            handler.authorize(self._authorization())
            handler.check_room()  # before reading the body: a full queue should cost nothing
            body = self._read_body()
            if encoding is not None:
                body = decompress(body, encoding, self.server.max_body)
            response = handler.export(body, self.server.decoders[signal] if content_type == JSON else None)
        except HttpError as exc:
            if exc.status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE:
                self._reply_text(exc.status, exc.message, close=exc.close)
            else:
                code = RESOURCE_EXHAUSTED if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE else INVALID_ARGUMENT
                self._reply_status(content_type, code, exc.message, exc.status, None, close=exc.close)
            return
        except Refused as exc:
            self._reply_status(content_type, exc.code.value[0], exc.message, HTTP_STATUS[exc.kind],
                               exc.retry_after, close=self._body_unread)
            return
        self._reply(HTTPStatus.OK, content_type,
                    _encode(RESPONSE_TYPES[signal]() if response is None else response, content_type))

    # Request parts ------------------------------------------------------------------------------------------

    _body_unread = True

    def _content_type(self) -> str | None:
        value = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        return value if value in (PROTOBUF, JSON) else None

    def _content_encoding(self) -> str | None:
        value = (self.headers.get("Content-Encoding") or "").strip().lower()
        if value in ("", "identity"):
            return None
        if value in _DECOMPRESSORS:
            return value
        raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                        "unsupported content encoding, expected gzip, deflate or none", close=True)

    def _authorization(self) -> bytes | None:
        value = self.headers.get("Authorization")
        return None if value is None else value.encode("latin-1", "replace")

    def _read_body(self) -> bytes:
        limit = self.server.max_body
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = self._read_chunked(limit)
        else:
            length_header = self.headers.get("Content-Length")
            if length_header is None:
                raise HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length or chunked encoding required",
                                close=True)
            try:
                length = int(length_header)
            except ValueError:
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length", close=True) from None
            if length < 0:
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length", close=True)
            if length > limit:
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes", close=True)
            body = self.rfile.read(length)
            if len(body) != length:
                raise HttpError(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length", close=True)
        self._body_unread = False
        return body

    def _read_chunked(self, limit: int) -> bytes:
        """Transfer-Encoding: chunked (what Node's http sends for a streamed gzip body)."""
        body = bytearray()
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid chunked encoding", close=True) from None
            if size < 0:
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid chunked encoding", close=True)
            if size == 0:
                break
            if len(body) + size > limit:
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes", close=True)
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid chunked encoding", close=True)
            body += chunk
        for _ in range(100):  # trailers, up to the empty line
            if self.rfile.readline(65538) in (b"\r\n", b"\n", b""):
                break
        else:
            raise HttpError(HTTPStatus.BAD_REQUEST, "too many trailers", close=True)
        return bytes(body)

    # Replies ------------------------------------------------------------------------------------------------

    def _reply_status(self, content_type: str, code: int, message: str, status: HTTPStatus,
                      retry_after: float | None, close: bool) -> None:
        """An error reply: a google.rpc.Status (`code` a google.rpc.Code) encoded like the request."""
        body = _encode(error_status(code, message, retry_after), content_type)
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))  # delay-seconds is an integer
        if status == HTTPStatus.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        self._reply(status, content_type, body, headers, close)

    def _reply_text(self, status: HTTPStatus, message: str, close: bool = False) -> None:
        self._reply(status, "text/plain; charset=utf-8", message.encode() + b"\n", close=close)

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes, headers: dict[str, str] | None = None,
               close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self._cors_headers()
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    # CORS (browsers) ----------------------------------------------------------------------------------------

    def _allowed_origin(self) -> str | None:
        origin = self.headers.get("Origin")
        if origin and any(p.fullmatch(origin) for p in self.server.cors):
            return origin
        return None

    def _cors_headers(self) -> None:
        origin = self._allowed_origin()
        if origin is not None:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")

    def do_OPTIONS(self) -> None:  # noqa: N802
        """CORS preflight: 204 with the allowed method and headers for an allowed origin."""
        if PATHS.get(self.path.split("?", 1)[0]) is None or not self.server.cors:
            self._not_allowed()
            return
        self.send_response(HTTPStatus.NO_CONTENT)
        if self._allowed_origin() is not None:
            self.send_header("Access-Control-Allow-Methods", "POST")
            self.send_header("Access-Control-Allow-Headers", CORS_HEADERS)
            self.send_header("Access-Control-Max-Age", str(self.server.cors_max_age))
        self._cors_headers()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _not_allowed(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """The standard handler writes every request to stderr; the hop counts them instead."""
        log.debug("OTLP/HTTP " + format, *args)


def _encode(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        return json.dumps(json_format.MessageToDict(message)).encode()
    return message.SerializeToString()


def _server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The receiver's TLS (and mutual TLS) from the same files the gRPC receiver uses."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        context.load_verify_locations(str(tls.ca_file))
    if tls.client_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_http_server(cfg: ReceiverConfig, handlers: dict[str, ExportHandler]) -> OtlpHttpServer:
    """The OTLP/HTTP server on `cfg.http.endpoint` (bound, not yet serving), sharing the gRPC receiver's
    handlers (and so their admission, auth and metrics)."""
    assert cfg.http is not None
    return OtlpHttpServer(cfg, cfg.http, handlers)


def serve_in_thread(server: OtlpHttpServer) -> threading.Thread:
    server.serving = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="recohop-http", daemon=True)
    thread.start()
    return thread


__all__ = ["OtlpHttpServer", "build_http_server", "serve_in_thread", "json_decoder", "decompress"]
