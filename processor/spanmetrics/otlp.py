"""Derived metrics as one OTLP ExportMetricsServiceRequest (cumulative temporality), emitted from `flush`.

Counters become monotonic Sums (the OTLP name drops Prometheus' `_total`), histograms explicit-bucket
Histograms in seconds with exemplars of kept traces. Labels become data point attributes; the overflow series
carries `otel.metric.overflow=true`.
"""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from processor.cardinality.limits import OVERFLOW_ATTRIBUTE, OVERFLOW_LABEL
from processor.spanmetrics.aggregate import MetricSnapshot

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
SCOPE = "recohop.spanmetrics"


def _attributes(target: object, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        kv = target.attributes.add()  # type: ignore[attr-defined]
        if key == OVERFLOW_LABEL:
            kv.key = OVERFLOW_ATTRIBUTE
            kv.value.bool_value = True
        else:
            kv.key = key
            kv.value.string_value = value


def to_otlp(snapshots: list[MetricSnapshot], start_ns: int, now_ns: int,
            service_name: str = "recohop") -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    kv = rm.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service_name
    sm = rm.scope_metrics.add()
    sm.scope.name = SCOPE
    for snap in snapshots:
        if not snap.points:
            continue
        metric = sm.metrics.add()
        metric.description = snap.help
        if snap.kind == "counter":
            metric.name = snap.name.removesuffix("_total")
            metric.unit = "1"
            metric.sum.aggregation_temporality = CUMULATIVE
            metric.sum.is_monotonic = True
            for point in snap.points:
                dp = metric.sum.data_points.add()
                dp.start_time_unix_nano, dp.time_unix_nano = start_ns, now_ns
                if snap.integer and abs(point.value) < 2**63:  # past int64: as a double, never a failed flush
                    dp.as_int = int(round(point.value))
                else:
                    dp.as_double = point.value
                _attributes(dp, point.labels)
            continue
        metric.name = snap.name
        metric.unit = "s"
        metric.histogram.aggregation_temporality = CUMULATIVE
        for point in snap.points:
            hp = metric.histogram.data_points.add()
            hp.start_time_unix_nano, hp.time_unix_nano = start_ns, now_ns
            hp.explicit_bounds.extend(snap.bounds)
            hp.bucket_counts.extend(point.buckets)
            hp.count = sum(point.buckets)
            hp.sum = point.value
            _attributes(hp, point.labels)
            for ex in point.exemplars.values():
                e = hp.exemplars.add()
                e.trace_id, e.span_id = ex.trace_id, ex.span_id
                e.as_double, e.time_unix_nano = ex.value, ex.time_unix_nano
    return request
