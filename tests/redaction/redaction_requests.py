"""Real OTLP request messages with a given text in every position the redaction stage covers."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from processor.otlp_values import kv


def nested(text: str) -> AnyValue:
    """{"inner": {"deep": text, "list": [text, 7]}} as an AnyValue."""
    value = AnyValue()
    inner = value.kvlist_value.values.add(key="inner")
    inner.value.kvlist_value.values.add(key="deep").value.string_value = text
    array = inner.value.kvlist_value.values.add(key="list").value.array_value
    array.values.add().string_value = text
    array.values.add().int_value = 7
    return value


def traces_request(texts: list[str], user_ids: list[str] | None = None) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "recommendation-service"), kv("host.note", texts[0])])
    ss = rs.scope_spans.add()
    ss.scope.name = "recommender"
    ss.scope.attributes.append(kv("scope.note", texts[-1]))
    for i, text in enumerate(texts):
        span = ss.spans.add(trace_id=bytes([i % 256]) * 16, span_id=bytes([i % 256 + 1]) * 8,
                            name=f"lookup {text}", start_time_unix_nano=1, end_time_unix_nano=2)
        span.attributes.extend([kv("reco.request_id", f"req-{i:06x}"), kv("reco.placement", "home"),
                                kv("reco.num_results", 10), kv("reco.score", 0.5), kv("reco.search_query", text)])
        span.attributes.add(key="ctx").value.CopyFrom(nested(text))
        if user_ids:
            span.attributes.append(kv("user.id", user_ids[i % len(user_ids)]))
        event = span.events.add(name=f"event {text}", time_unix_nano=2)
        event.attributes.append(kv("exception.message", text))
        link = span.links.add(trace_id=b"\x07" * 16, span_id=b"\x08" * 8)
        link.attributes.append(kv("link.note", text))
        span.status.message = text
        span.status.code = 2
    return req


def clean_traces_request(texts: list[str]) -> ExportTraceServiceRequest:
    """Like `traces_request` but with every field a span can have, for the no-false-positive check."""
    return traces_request(texts)


def logs_request(texts: list[str]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(kv("host.note", texts[0]))
    sl = rl.scope_logs.add()
    sl.scope.attributes.append(kv("scope.note", texts[-1]))
    for text in texts:
        record = sl.log_records.add(severity_text="INFO", event_name=f"evt {text}")
        record.body.string_value = text
        record.attributes.append(kv("log.note", text))
        structured = sl.log_records.add()
        structured.body.CopyFrom(nested(text))
        structured.attributes.add(key="payload").value.CopyFrom(nested(text))
    return req


def metrics_request(texts: list[str]) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("host.note", texts[0]))
    sm = rm.scope_metrics.add()
    sm.scope.attributes.append(kv("scope.note", texts[-1]))
    for text in texts:
        total = sm.metrics.add(name="reco.requests")
        point = total.sum.data_points.add(as_int=3)
        point.attributes.append(kv("reco.search_query", text))
        point.exemplars.add(as_int=1).filtered_attributes.append(kv("reco.exemplar_note", text))
        gauge = sm.metrics.add(name="reco.queue")
        gauge.gauge.data_points.add(as_double=1.0).attributes.append(kv("q", text))
        hist = sm.metrics.add(name="reco.latency")
        hist.histogram.data_points.add(count=1, sum=2.0).attributes.append(kv("q", text))
        exp = sm.metrics.add(name="reco.latency.exp")
        exp.exponential_histogram.data_points.add(count=1).attributes.append(kv("q", text))
        summary = sm.metrics.add(name="reco.latency.summary")
        summary.summary.data_points.add(count=1).attributes.append(kv("q", text))
    return req
