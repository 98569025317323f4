"""Send real OTLP with the OpenTelemetry SDK exporters (what users' services run)."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode


def tracer_provider(endpoint: str, gzip: bool = False, service: str = "test-service") -> TracerProvider:
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True,
                                compression=Compression.Gzip if gzip else Compression.NoCompression)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=256))
    return provider


def send_spans(endpoint: str, count: int, gzip: bool = False, error: bool = False) -> list[bytes]:
    """Send `count` small traces; returns each span serialized exactly as the SDK's OTLP encoder makes it."""
    provider = tracer_provider(endpoint, gzip)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("recohop.tests")
    for i in range(count):
        with tracer.start_as_current_span("reco.generate") as span:
            span.set_attribute("reco.request_id", f"req-{i}")
            span.set_attribute("reco.num_results", i % 20)
            if error:
                span.set_status(Status(StatusCode.ERROR, "model store timeout"))
            with tracer.start_as_current_span("reco.fetch_candidates"):
                pass
    provider.force_flush()
    provider.shutdown()
    encoded = encode_spans(memory.get_finished_spans())
    return [span.SerializeToString() for rs in encoded.resource_spans for ss in rs.scope_spans for span in ss.spans]


def send_metrics(endpoint: str, gzip: bool = False) -> None:
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True,
                                  compression=Compression.Gzip if gzip else Compression.NoCompression)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "m"}))
    meter = provider.get_meter("recohop.tests")
    counter = meter.create_counter("reco.requests")
    for placement in ("home", "cart", "email"):
        counter.add(3, {"reco.placement": placement})
    meter.create_histogram("reco.latency", unit="ms").record(12.5, {"reco.placement": "home"})
    provider.force_flush()
    provider.shutdown()


def send_logs(endpoint: str, count: int, gzip: bool = False) -> None:
    exporter = OTLPLogExporter(endpoint=endpoint, insecure=True,
                               compression=Compression.Gzip if gzip else Compression.NoCompression)
    provider = LoggerProvider(resource=Resource.create({"service.name": "l"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("recohop.tests")
    from opentelemetry._logs import LogRecord, SeverityNumber

    for i in range(count):
        logger.emit(LogRecord(body=f"log line {i}", severity_number=SeverityNumber.INFO, severity_text="INFO"))
    provider.force_flush()
    provider.shutdown()
