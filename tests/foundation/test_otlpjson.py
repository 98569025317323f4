"""OTLP/JSON as the file sink writes it: hex ids and integer enums, read back to the same messages."""

from __future__ import annotations

import json

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from processor import otlpjson
from processor.otlp_values import kv

TRACE_ID = bytes(range(16))
SPAN_ID = bytes(range(100, 108))
PARENT_ID = bytes(range(200, 208))


def traces() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "recommendation-service"))
    span = rs.scope_spans.add().spans.add(trace_id=TRACE_ID, span_id=SPAN_ID, parent_span_id=PARENT_ID,
                                          name="reco.generate", kind=Span.SPAN_KIND_SERVER,
                                          start_time_unix_nano=1, end_time_unix_nano=2**63 - 1)
    span.status.code = Status.STATUS_CODE_ERROR
    # An attribute that looks like an id field name and holds an id-shaped value stays as it is.
    span.attributes.extend([kv("traceId", "AAECAwQFBgcICQoLDA0ODw=="), kv("reco.num_results", 12)])
    span.links.add(trace_id=TRACE_ID[::-1], span_id=SPAN_ID[::-1])
    return request


def test_ids_are_hex_and_enums_integers() -> None:
    tree = json.loads(otlpjson.dumps(traces()))
    span = tree["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == TRACE_ID.hex() and span["spanId"] == SPAN_ID.hex()
    assert span["parentSpanId"] == PARENT_ID.hex()
    assert span["links"][0] == {"traceId": TRACE_ID[::-1].hex(), "spanId": SPAN_ID[::-1].hex()}
    assert span["kind"] == 2 and span["status"]["code"] == 2
    assert span["endTimeUnixNano"] == str(2**63 - 1)  # 64-bit integers as strings, as protobuf's mapping
    assert {"key": "traceId", "value": {"stringValue": "AAECAwQFBgcICQoLDA0ODw=="}} in span["attributes"]


def test_every_signal_round_trips() -> None:
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add(trace_id=TRACE_ID, span_id=SPAN_ID,
                                                                       severity_number=17)
    record.body.string_value = "model server unavailable"
    metrics = ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add(name="reco_requests")
    point = metric.sum.data_points.add(as_int=3)
    point.exemplars.add(trace_id=TRACE_ID, span_id=SPAN_ID, as_double=0.5)
    metric.sum.aggregation_temporality = 2
    for request in (traces(), logs, metrics):
        line = otlpjson.dumps(request)
        assert "\n" not in line
        assert TRACE_ID.hex() in line
        assert otlpjson.loads(line, type(request)()) == request


def test_base64_ids_of_older_files_still_read() -> None:
    legacy = json_format.MessageToJson(traces(), indent=None)
    assert otlpjson.loads(legacy, ExportTraceServiceRequest()) == traces()
    assert otlpjson.hex_ids(json.loads(legacy)) == [TRACE_ID.hex(), TRACE_ID[::-1].hex()]
    assert otlpjson.hex_ids(json.loads(otlpjson.dumps(traces()))) == [TRACE_ID.hex(), TRACE_ID[::-1].hex()]
