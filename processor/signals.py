"""The three OTLP signals: request/response types and gRPC method paths, in one place."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

SIGNALS = ("traces", "metrics", "logs")

REQUEST_TYPES = {
    "traces": trace_pb.ExportTraceServiceRequest,
    "metrics": metrics_pb.ExportMetricsServiceRequest,
    "logs": logs_pb.ExportLogsServiceRequest,
}
RESPONSE_TYPES = {
    "traces": trace_pb.ExportTraceServiceResponse,
    "metrics": metrics_pb.ExportMetricsServiceResponse,
    "logs": logs_pb.ExportLogsServiceResponse,
}
SERVICE_NAMES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}
METHOD_PATHS = {signal: f"/{name}/Export" for signal, name in SERVICE_NAMES.items()}


def rejected_items(signal: str, response: object) -> int:
    """Items the peer rejected in an export response's partial success."""
    partial = response.partial_success  # type: ignore[attr-defined]
    if signal == "traces":
        return int(partial.rejected_spans)
    if signal == "metrics":
        return int(partial.rejected_data_points)
    return int(partial.rejected_log_records)
