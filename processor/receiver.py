"""OTLP/gRPC receiver: TraceService, MetricsService and LogsService `Export`, plus grpc.health.v1.

Requests arrive as raw bytes and are parsed once here, so a malformed body gets INVALID_ARGUMENT (not the
INTERNAL that a failing deserializer would give) and, when no stage changes data, the original bytes are
forwarded without re-encoding.
"""

from __future__ import annotations

import hmac
import logging
import threading
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from processor.config import ReceiverConfig
from processor.exporter import Exporter
from processor.pipeline import Pipeline, count_items
from processor.retryinfo import retry_status
from processor.signals import REQUEST_TYPES, RESPONSE_TYPES, SERVICE_NAMES, SIGNALS
from processor.stages.base import Backpressure, Emitted, Rejected, Rejections
from processor.telemetry import SIGNAL_ITEMS, HopMetrics

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


class ExportHandler:
    """One signal's Export method."""

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
        if self.expected_auth is not None and not self._authorized(context):
            self.refused.labels(self.items_name, "unauthenticated").inc()
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if not self.exporter.has_room():  # before parsing: a refusal should cost the GIL nothing
            self._push_back(context, 0, "exporter queue full", QUEUE_FULL_RETRY_AFTER)
        if not self.admission.enter():  # CPU-bound: say so now, with RetryInfo
            self._push_back(context, 0, "hop overloaded", OVERLOAD_RETRY_AFTER)
        try:
            return self._admitted(raw, context)
        finally:
            self.admission.leave()

    def _admitted(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = self.request_type.FromString(raw)
        except DecodeError:
            self.refused.labels(self.items_name, "malformed").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed OTLP {self.signal} request")
        items = count_items(self.signal, request)
        self.received.inc(items)
        try:
            handed = raw if self.signal == "traces" and self.pipeline.traces_as_bytes else request
            out, rejections = self.pipeline.process(Emitted(**{self.signal: [handed]}))
        except Backpressure as exc:
            self._push_back(context, items, exc.reason, exc.retry_after)
        except Rejected as exc:
            self.refused.labels(self.items_name, "rejected").inc(items)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.reason)
        except Exception as exc:  # a stage bug must cost this request only, and must not echo its values
            self.refused.labels(self.items_name, "internal_error").inc(items)
            log.error("a stage failed on a %s request (%s); the request was refused", self.signal,
                      type(exc).__name__)
            context.abort(grpc.StatusCode.INTERNAL, "recohop could not process this request")
        produced = getattr(out, self.signal)
        if self.pipeline.forwards_unchanged and len(produced) == 1 and produced[0] is handed:
            if items:
                self.exporter.submit(self.signal, raw, items, force=True)
            other = Emitted(**{s: getattr(out, s) for s in SIGNALS if s != self.signal})
            self.exporter.submit_emitted(other)
        else:
            self.exporter.submit_emitted(out)
        if rejections.count:
            return self._partial_success(rejections)
        return self.empty_response

    def _partial_success(self, rejections: Rejections) -> bytes:
        self.refused.labels(self.items_name, "invalid").inc(rejections.count)
        response = RESPONSE_TYPES[self.signal]()
        field = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}
        setattr(response.partial_success, field[self.signal], rejections.count)
        response.partial_success.error_message = rejections.message()
        return response.SerializeToString()

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        for key, value in context.invocation_metadata():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self.expected_auth or b"")
        return False

    def _push_back(self, context: grpc.ServicerContext, items: int, reason: str, retry_after: float) -> None:
        """RESOURCE_EXHAUSTED + RetryInfo. Refused requests are counted (items only when already parsed)."""
        self.refused.labels(self.items_name, "backpressure").inc(items)
        self.refused_requests.inc()
        context.abort_with_status(retry_status(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, retry_after))


def build_server(cfg: ReceiverConfig, pipeline: Pipeline, exporter: Exporter, metrics: HopMetrics,
                 admission: Admission | None = None) -> tuple[grpc.Server, health.HealthServicer, int]:
    """The gRPC server (not yet started), its health servicer and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="recohop-recv"),
        options=[("grpc.max_receive_message_length", cfg.max_recv_msg_size),
                 ("grpc.max_send_message_length", 4 << 20),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=cfg.workers * 8,
    )
    admission = admission or Admission(cfg.max_pending_requests)
    for signal in SIGNALS:
        handler = ExportHandler(signal, pipeline, exporter, metrics, cfg.bearer_token, admission)
        method = grpc.unary_unary_rpc_method_handler(handler)  # bytes in, bytes out
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
