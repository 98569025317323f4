"""The file sink's lines stay within what otelcol's file readers take (1 MiB by default): a larger request is cut
into requests that together hold every span, log record and metric data point once, in order, under the same
resource and scope. (test_otelcol_interop.py checks the real collector reads them; this checks the cutting on
random requests, fast.)"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from interop_peers import leaves
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from otlp_strategies import any_values

from processor import otlpjson

ATTRIBUTES = st.lists(st.builds(KeyValue, key=st.text(max_size=6), value=any_values(1)), max_size=3)
TEXT = st.text(max_size=40)


def check_cut(request: Any, limit: int) -> list[str]:
    """Cut at `limit`; every line parses, fits (or holds one item too large for any line), and nothing moves."""
    lines = otlpjson.dump_lines(request, limit)
    parsed = [otlpjson.loads(line, type(request)()) for line in lines]
    assert [leaf for part in parsed for leaf in leaves(part)] == leaves(request)
    for line, part in zip(lines, parsed, strict=True):
        assert "\n" not in line
        assert len(line.encode()) <= limit or len(leaves(part)) == 1, (len(line), limit)
    if len(otlpjson.dumps(request)) <= limit:
        assert lines == [otlpjson.dumps(request)]
    return lines


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs = request.resource_spans.add(schema_url=draw(TEXT))
        rs.resource.attributes.extend(draw(ATTRIBUTES))
        for _ in range(draw(st.integers(0, 3))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(TEXT)
            for _ in range(draw(st.integers(0, 10))):
                span = ss.spans.add(trace_id=draw(st.binary(min_size=16, max_size=16)),
                                    span_id=draw(st.binary(min_size=8, max_size=8)), name=draw(TEXT),
                                    kind=draw(st.integers(0, 5)))
                span.attributes.extend(draw(ATTRIBUTES))
    return request


@st.composite
def log_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rl = request.resource_logs.add()
        rl.resource.attributes.extend(draw(ATTRIBUTES))
        for _ in range(draw(st.integers(0, 3))):
            sl = rl.scope_logs.add()
            for _ in range(draw(st.integers(0, 10))):
                record = sl.log_records.add(trace_id=draw(st.binary(min_size=16, max_size=16)),
                                            severity_number=draw(st.integers(0, 24)))
                record.body.CopyFrom(draw(any_values(1)))
    return request


@st.composite
def metric_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rm = request.resource_metrics.add()
        rm.resource.attributes.extend(draw(ATTRIBUTES))
        for _ in range(draw(st.integers(0, 2))):
            sm = rm.scope_metrics.add()
            for _ in range(draw(st.integers(0, 4))):
                metric = sm.metrics.add(name=draw(TEXT), unit=draw(st.sampled_from(["", "ms", "1"])))
                kind = draw(st.sampled_from(["gauge", "sum", "histogram"]))
                for _ in range(draw(st.integers(0, 15))):
                    if kind == "histogram":
                        metric.histogram.aggregation_temporality = 2
                        point = metric.histogram.data_points.add(count=3, sum=draw(st.floats(allow_nan=False)),
                                                                 bucket_counts=[1, 2], explicit_bounds=[1.0])
                    else:
                        points = metric.gauge.data_points if kind == "gauge" else metric.sum.data_points
                        point = points.add(as_int=draw(st.integers(-(2**63), 2**63 - 1)))
                    point.attributes.extend(draw(ATTRIBUTES))
                    if draw(st.booleans()):
                        point.exemplars.add(trace_id=draw(st.binary(min_size=16, max_size=16)), as_double=1.0)
    return request


@settings(max_examples=40, deadline=None)
@given(request=st.one_of(trace_requests(), log_requests(), metric_requests()), limit=st.integers(200, 6000))
def test_cut_lines_fit_and_keep_every_item_in_place(request: Any, limit: int) -> None:
    check_cut(request, limit)


def test_a_large_request_is_cut_below_one_mebibyte_and_a_small_one_is_not() -> None:
    """The sizes that matter in practice: thousands of spans per request (otelcol's batch in front of recohop)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="recommendation-service"))
    ss = rs.scope_spans.add()
    for i in range(10_000):
        span = ss.spans.add(trace_id=i.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name="reco.generate")
        span.attributes.add(key="reco.request_id", value=AnyValue(string_value=f"req-{i:08d}" * 8))
    assert len(otlpjson.dumps(request)) > 2 * otlpjson.MAX_LINE_BYTES
    lines = check_cut(request, otlpjson.MAX_LINE_BYTES)
    assert len(lines) >= 3
    assert all(len(line) <= otlpjson.MAX_LINE_BYTES for line in lines)
    assert otlpjson.dump_lines(ExportTraceServiceRequest.FromString(b"")) == ["{}"]


def test_one_span_larger_than_a_line_gets_a_line_of_its_own() -> None:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    spans.add(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="small")
    spans.add(trace_id=b"\x02" * 16, span_id=b"\x02" * 8, name="x" * 5000)
    spans.add(trace_id=b"\x03" * 16, span_id=b"\x03" * 8, name="small")
    lines = check_cut(request, 1000)
    assert [len(json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]) for line in lines] == [1, 1, 1]


def test_a_metric_with_many_points_is_cut_between_points() -> None:
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="reco_requests", unit="1")
    metric.sum.aggregation_temporality, metric.sum.is_monotonic = 2, True
    for i in range(400):
        metric.sum.data_points.add(as_int=i).attributes.add(key="placement", value=AnyValue(string_value=f"p{i}"))
    lines = check_cut(request, 2000)
    assert len(lines) > 5
    for line in lines:
        sum_ = json.loads(line)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]
        assert sum_["isMonotonic"] is True and sum_["aggregationTemporality"] == 2
