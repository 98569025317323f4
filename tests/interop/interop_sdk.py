"""Real OTLP from the OpenTelemetry SDK's gRPC exporters, recording the exact export requests that were accepted,
so a test can compare what arrives anywhere downstream with what was sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

SERVICE = "recommendation-service"
PLACEMENTS = ("home", "product_page", "cart", "email")


class _Recording:
    """Mixin for an SDK OTLP exporter: keeps the request of every export the server accepted."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accepted: list[Any] = []
        self.failed = 0

    def export(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().export(data, *args, **kwargs)  # type: ignore[misc]
        if result.name == "SUCCESS":
            self.accepted.append(self._translate_data(data))  # type: ignore[attr-defined]
        else:
            self.failed += 1
        return result


class RecordingSpanExporter(_Recording, OTLPSpanExporter):
    pass


class RecordingLogExporter(_Recording, OTLPLogExporter):
    pass


class RecordingMetricExporter(_Recording, OTLPMetricExporter):
    pass


def _compression(gzip: bool) -> Compression:
    return Compression.Gzip if gzip else Compression.NoCompression


def send_traces(endpoint: str, traces: int, batch: int = 512, gzip: bool = False,
                error_every: int = 7) -> list[Any]:
    """`traces` recommendation traces (5 spans each: every span kind, parents, events, links, statuses UNSET, OK
    and ERROR every `error_every`-th trace) in requests of `batch` spans (the rest at the end). Returns the accepted
    requests. The processor's queue holds everything, so no span is dropped before export (the SDK drops
    silently), and it exports only full batches until the final flush."""
    exporter = RecordingSpanExporter(endpoint=endpoint, insecure=True, compression=_compression(gzip))
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE, "service.version": "1.2.3"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=max(traces * 5, batch),
                                                   max_export_batch_size=batch, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("recohop.interop", "0.1")
    clicks = provider.get_tracer("recohop.interop.clicks")
    for i in range(traces):
        placement = PLACEMENTS[i % len(PLACEMENTS)]
        failed = error_every > 0 and i % error_every == 0
        with tracer.start_as_current_span("reco.generate", kind=SpanKind.SERVER, attributes={
                "reco.request_id": f"req-{i}", "reco.placement": placement, "reco.num_results": i % 20,
                "reco.score": i / 7, "reco.cold_start": i % 5 == 0, "reco.items": [f"item-{i}", "item-0"]}) as root:
            with tracer.start_as_current_span("reco.fetch_candidates", kind=SpanKind.CLIENT) as fetch:
                fetch.add_event("cache.lookup", {"cache.hit": i % 2 == 0})
                fetch.set_status(Status(StatusCode.OK))
            with tracer.start_as_current_span("reco.score_candidates", kind=SpanKind.INTERNAL):
                with tracer.start_as_current_span("reco.publish", kind=SpanKind.PRODUCER):
                    pass
            if failed:
                root.record_exception(TimeoutError("model store timeout"))
                root.set_status(Status(StatusCode.ERROR, "model store timeout"))
            root_context = root.get_span_context()
        with clicks.start_as_current_span("reco.click", kind=SpanKind.CONSUMER, links=[Link(root_context, {
                "link.kind": "recommendation"})], attributes={"reco.position": 1 + i % 10}):
            pass
    provider.force_flush()
    provider.shutdown()
    assert exporter.failed == 0, "the receiver refused an SDK export"
    return exporter.accepted


def send_logs(endpoint: str, count: int, gzip: bool = False) -> list[Any]:
    """`count` log records, half inside a span (trace and span ids set), every severity band. Returns the
    accepted requests."""
    exporter = RecordingLogExporter(endpoint=endpoint, insecure=True, compression=_compression(gzip))
    provider = LoggerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_queue_size=max(count, 512),
                                                              schedule_delay_millis=200))
    logger = provider.get_logger("recohop.interop.logs")
    tracer = TracerProvider().get_tracer("recohop.interop.logs")
    severities = (SeverityNumber.DEBUG, SeverityNumber.INFO, SeverityNumber.WARN, SeverityNumber.ERROR,
                  SeverityNumber.FATAL)
    for i in range(count):
        severity = severities[i % len(severities)]
        record = dict(body=f"recommendation {i} served", severity_number=severity, severity_text=severity.name,
                      attributes={"reco.request_id": f"req-{i}", "log.index": i})
        if i % 2:
            with tracer.start_as_current_span("reco.generate"):
                logger.emit(LogRecord(**record))  # the current span's ids
        else:
            logger.emit(LogRecord(**record))
    provider.force_flush()
    provider.shutdown()
    assert exporter.failed == 0, "the receiver refused an SDK export"
    return exporter.accepted


def send_metrics(endpoint: str, gzip: bool = False) -> list[Any]:
    """Counter, up-down counter, explicit and exponential histograms, gauge, with exemplars (trace and span ids)
    recorded inside spans. Returns the accepted requests."""
    exporter = RecordingMetricExporter(endpoint=endpoint, insecure=True, compression=_compression(gzip))
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": SERVICE}),
                             exemplar_filter=AlwaysOnExemplarFilter(),
                             views=[View(instrument_name="reco.embedding_fetch",
                                         aggregation=ExponentialBucketHistogramAggregation())])
    meter = provider.get_meter("recohop.interop.metrics", "0.1")
    tracer = TracerProvider().get_tracer("recohop.interop.metrics")
    requests = meter.create_counter("reco.requests")
    in_flight = meter.create_up_down_counter("reco.in_flight")
    latency = meter.create_histogram("reco.latency", unit="ms")
    fetch = meter.create_histogram("reco.embedding_fetch", unit="ms")

    def gauge_callback(_options: Any) -> Sequence[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(0.25 * (n + 1), {"reco.placement": p}) for n, p in enumerate(PLACEMENTS)]

    meter.create_observable_gauge("reco.ctr", callbacks=[gauge_callback])
    for i in range(40):
        placement = PLACEMENTS[i % len(PLACEMENTS)]
        with tracer.start_as_current_span("reco.generate"):
            requests.add(1 + i % 3, {"reco.placement": placement})
            in_flight.add(1 if i % 3 else -1, {"reco.placement": placement})
            latency.record(3.5 * i, {"reco.placement": placement})
            fetch.record(0.1 + i, {"reco.cache_hit": i % 2 == 0})
    provider.force_flush()
    provider.shutdown()
    assert exporter.failed == 0, "the receiver refused an SDK export"
    return exporter.accepted


def spans_of(requests: list[Any]) -> list[Any]:
    return [span for r in requests for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]


def log_records_of(requests: list[Any]) -> list[Any]:
    return [rec for r in requests for rl in r.resource_logs for sl in rl.scope_logs for rec in sl.log_records]


def data_points_of(requests: list[Any]) -> list[tuple[str, Any]]:
    """(metric name, data point) of every data point, any metric kind."""
    out = []
    for r in requests:
        for rm in r.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    out.extend((metric.name, p) for p in getattr(metric, kind).data_points)
    return out
