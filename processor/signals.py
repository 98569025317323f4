"""The three OTLP signals: request/response types, gRPC method paths and item counting, in one place (the
receiver, the pipeline and the exporter all read them from here)."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

SIGNALS = ("traces", "metrics", "logs")
# What each signal's items are called in the hop's metrics (the `signal` label of recohop_*_items_total).
SIGNAL_ITEMS = {"traces": "spans", "metrics": "metric_points", "logs": "log_records"}

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


# The partial-success field of each signal's export response that says how many items were rejected.
REJECTED_FIELDS = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}


def rejected_items(signal: str, response: object) -> int:
    """Items the peer rejected in an export response's partial success."""
    return int(getattr(response.partial_success, REJECTED_FIELDS[signal]))  # type: ignore[attr-defined]


def count_items(signal: str, request: object) -> int:
    """Spans, metric data points or log records in one export request. A serialized request is parsed to be
    counted: the hot path carries counts with the requests instead (`Emitted.trace_spans`)."""
    if isinstance(request, bytes):
        return count_items(signal, REQUEST_TYPES[signal].FromString(request))
    if signal == "traces":
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)  # type: ignore[attr-defined]
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)  # type: ignore[attr-defined]
    total = 0
    for rm in request.resource_metrics:  # type: ignore[attr-defined]
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                field = metric.WhichOneof("data")
                if field is not None:
                    total += len(getattr(metric, field).data_points)
    return total
