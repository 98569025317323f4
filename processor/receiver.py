"""OTLP/gRPC receiver: TraceService, MetricsService and LogsService `Export`, plus grpc.health.v1.

Requests arrive as raw bytes and are parsed once here, so a malformed body gets INVALID_ARGUMENT (not the
INTERNAL that a failing deserializer would give) and, when no stage changes data, the original bytes are
forwarded without re-encoding. What happens to one request (auth, admission, parse, pipeline, partial success)
is `ExportHandler`'s, shared with the OTLP/HTTP receiver (`processor/http_receiver.py`).
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from processor.config import ReceiverConfig
from processor.exporter import Exporter
from processor.pipeline import Pipeline
from processor.retryinfo import retry_status
from processor.signals import (
    REJECTED_FIELDS,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    SERVICE_NAMES,
    SIGNAL_ITEMS,
    SIGNALS,
    count_items,
)
from processor.stages.base import Backpressure, Emitted, Rejected, Rejections
from processor.telemetry import HopMetrics

log = logging.getLogger("recohop.receiver")

QUEUE_FULL_RETRY_AFTER = 1.0
OVERLOAD_RETRY_AFTER = 0.5


class Admission:
    """Requests being parsed or waiting for the pipeline, shared by the three signals. Past the limit a request
    is refused at once: with one pipeline lock, more waiting requests only add latency and memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.pending >= self.limit:
                return False
            self.pending += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.pending -= 1


class Refused(Exception):
    """A whole request refused. `kind` says why in transport-neutral words; the gRPC receiver maps it to a
    status code (`GRPC_CODES`), the HTTP receiver to an HTTP status, so both answer the same refusal alike.
    `retry_after` (seconds) is set when the client should come back: RetryInfo / Retry-After."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after

    @property
    def code(self) -> grpc.StatusCode:
        return GRPC_CODES[self.kind]


# Refusal kinds: unauthenticated, queue_full (the export queue is full), overloaded (admission),
# backpressure (a stage said "not now"), malformed (not an OTLP request), rejected (a stage refuses it for
# good), internal (a stage failed).
GRPC_CODES = {
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "queue_full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "backpressure": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "malformed": grpc.StatusCode.INVALID_ARGUMENT,
    "rejected": grpc.StatusCode.INVALID_ARGUMENT,
    "internal": grpc.StatusCode.INTERNAL,
}

# Turns a request body into the signal's request message; raises DecodeError for anything else.
Decoder = Callable[[bytes], Message]


class ExportHandler:
    """One signal's Export: auth, admission, parse, pipeline, exporter and partial success, shared by the
    gRPC receiver (`__call__`) and the HTTP receiver (`authorize` + `export`)."""

    def __init__(self, signal: str, pipeline: Pipeline, exporter: Exporter, metrics: HopMetrics,
                 bearer_token: bytes | None = None, admission: Admission | None = None) -> None:
        self.signal = signal
        self.admission = admission or Admission(ReceiverConfig.max_pending_requests)
        self.expected_auth = b"Bearer " + bearer_token if bearer_token else None
        self.request_type = REQUEST_TYPES[signal]
        self.empty_response = RESPONSE_TYPES[signal]().SerializeToString()
        self.pipeline = pipeline
        self.exporter = exporter
        self.items_name = SIGNAL_ITEMS[signal]
        self.received = metrics.received.labels(self.items_name)
        self.refused = metrics.refused
        self.refused_requests = metrics.refused_requests.labels(self.items_name)

    def __call__(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        """The gRPC method: bytes in, bytes out."""
        try:
            self.authorize(_grpc_authorization(context))
            response = self.export(raw)
        except Refused as exc:
            if exc.retry_after is not None:
                context.abort_with_status(retry_status(exc.code, exc.message, exc.retry_after))
            context.abort(exc.code, exc.message)
        return self.empty_response if response is None else response.SerializeToString()

    def authorize(self, authorization: bytes | None) -> None:
        """Refuses (unauthenticated) unless the `authorization` value is the configured bearer token."""
        if self.expected_auth is None:
            return
        if authorization is None or not hmac.compare_digest(authorization, self.expected_auth):
            self.refused.labels(self.items_name, "unauthenticated").inc()
            raise Refused("unauthenticated", "missing or wrong bearer token")

    def check_room(self) -> None:
        """Refuses (queue_full) while the export queue is full: before parsing, so a refusal costs the GIL
        nothing (and the HTTP receiver calls it before reading the body)."""
        if not self.exporter.has_room():
            raise self._push_back(0, "queue_full", "exporter queue full", QUEUE_FULL_RETRY_AFTER)

    def export(self, body: bytes, decode: Decoder | None = None) -> Message | None:
        """Admit, parse (protobuf, or `decode` for another encoding), run the pipeline and queue the result.
        Returns the response message for a partial success, None when everything was accepted; raises
        Refused for a request refused as a whole."""
        self.check_room()
        if not self.admission.enter():  # CPU-bound: say so now, with RetryInfo
            raise self._push_back(0, "overloaded", "hop overloaded", OVERLOAD_RETRY_AFTER)
        try:
            return self._admitted(body, decode)
        finally:
            self.admission.leave()

    def _admitted(self, body: bytes, decode: Decoder | None) -> Message | None:
        raw: bytes | None = body if decode is None else None  # protobuf bytes, made from `decode`'s message
        request: Message | None = None
        # The first trace stage may vouch for the bytes in its own C walk (no parse here); what it cannot
        # vouch for is parsed as usual.
        admit = self.pipeline.admit_trace_bytes if self.signal == "traces" and raw is not None else None
        items = admit(raw) if admit is not None else None  # type: ignore[arg-type]
        if items is None:
            try:
                request = self.request_type.FromString(body) if decode is None else decode(body)
            except DecodeError as exc:
                self.refused.labels(self.items_name, "malformed").inc()
                detail = f": {exc}" if decode is not None and str(exc) else ""
                raise Refused("malformed", f"malformed OTLP {self.signal} request{detail}") from None
            items = count_items(self.signal, request)
        self.received.inc(items)
        try:
            if self.signal == "traces" and self.pipeline.traces_as_bytes:
                raw = handed = raw if raw is not None else request.SerializeToString()  # type: ignore[union-attr]
            else:
                handed = request
            batch = Emitted(**{self.signal: [handed]})
            if self.signal == "traces":
                batch.trace_spans = [items]  # the count travels with the request to the exporter
            out, rejections = self.pipeline.process(batch)
        except Backpressure as exc:
            raise self._push_back(items, "backpressure", exc.reason, exc.retry_after) from None
        except Rejected as exc:
            self.refused.labels(self.items_name, "rejected").inc(items)
            raise Refused("rejected", exc.reason) from None
        except Exception as exc:  # a stage bug must cost this request only, and must not echo its values
            self.refused.labels(self.items_name, "internal_error").inc(items)
            log.error("a stage failed on a %s request (%s); the request was refused", self.signal,
                      type(exc).__name__)
            raise Refused("internal", "recohop could not process this request") from None
        produced = getattr(out, self.signal)
        if self.pipeline.forwards_unchanged and len(produced) == 1 and produced[0] is handed:
            if items:
                self.exporter.submit(self.signal, raw if raw is not None else request.SerializeToString(),  # type: ignore[union-attr]
                                     items, force=True)
            other = Emitted(**{s: getattr(out, s) for s in SIGNALS if s != self.signal})
            self.exporter.submit_emitted(other)
        else:
            self.exporter.submit_emitted(out)
        if rejections.count:
            return self._partial_success(rejections)
        return None

    def _partial_success(self, rejections: Rejections) -> Message:
        self.refused.labels(self.items_name, "invalid").inc(rejections.count)
        response = RESPONSE_TYPES[self.signal]()
        setattr(response.partial_success, REJECTED_FIELDS[self.signal], rejections.count)
        response.partial_success.error_message = rejections.message()
        return response

    def _push_back(self, items: int, kind: str, reason: str, retry_after: float) -> Refused:
        """The refusal for "not now" (RESOURCE_EXHAUSTED + RetryInfo, HTTP 429/503 + Retry-After). Refused
        requests are counted (items only when already parsed)."""
        self.refused.labels(self.items_name, "backpressure").inc(items)
        self.refused_requests.inc()
        return Refused(kind, reason, retry_after)


def _grpc_authorization(context: grpc.ServicerContext) -> bytes | None:
    for key, value in context.invocation_metadata():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else value
    return None


def build_handlers(cfg: ReceiverConfig, pipeline: Pipeline, exporter: Exporter, metrics: HopMetrics,
                   admission: Admission | None = None) -> dict[str, ExportHandler]:
    """One ExportHandler per signal, sharing one admission: what the gRPC and HTTP receivers both call."""
    admission = admission or Admission(cfg.max_pending_requests)
    return {signal: ExportHandler(signal, pipeline, exporter, metrics, cfg.bearer_token, admission)
            for signal in SIGNALS}


def build_server(cfg: ReceiverConfig, pipeline: Pipeline, exporter: Exporter, metrics: HopMetrics,
                 admission: Admission | None = None, handlers: dict[str, ExportHandler] | None = None,
                 ) -> tuple[grpc.Server, health.HealthServicer, int]:
    """The gRPC server (not yet started), its health servicer and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="recohop-recv"),
        options=[("grpc.max_receive_message_length", cfg.max_recv_msg_size),
                 ("grpc.max_send_message_length", 4 << 20),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=cfg.workers * 8,
    )
    handlers = handlers or build_handlers(cfg, pipeline, exporter, metrics, admission)
    for signal in SIGNALS:
        method = grpc.unary_unary_rpc_method_handler(handlers[signal])  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAMES[signal], {"Export": method}),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if cfg.tls is not None and cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
        creds = grpc.ssl_server_credentials(
            [(cfg.tls.key_file.read_bytes(), cfg.tls.cert_file.read_bytes())],
            root_certificates=cfg.tls.ca_file.read_bytes() if cfg.tls.ca_file else None,
            require_client_auth=cfg.tls.client_auth,
        )
        port = server.add_secure_port(cfg.endpoint, creds)
    else:
        port = server.add_insecure_port(cfg.endpoint)
    if port == 0:
        raise OSError(f"cannot listen on {cfg.endpoint}")
    for name in ("", *SERVICE_NAMES.values()):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port
