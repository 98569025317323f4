"""The recommender's OpenTelemetry SDK setup: one TracerProvider, OTLP gRPC to the hop, seeded ids."""

from __future__ import annotations

import random

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

SERVICE_NAME = "recommendation-service"
SCOPE = "recommender"


class SeededIdGenerator(IdGenerator):
    """Reproducible trace/span ids, so a seeded run names the same traces every time."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"ids:{seed}")

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


def otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, insecure=True)


def make_provider(exporter: SpanExporter | None = None, endpoint: str | None = None, seed: int | None = None,
                  processor: SpanProcessor | None = None) -> TracerProvider:
    """A provider exporting through a large BatchSpanProcessor (sized so a burst never drops spans)."""
    resource = Resource.create({"service.name": SERVICE_NAME, "service.version": "0.1.0",
                                "deployment.environment": "simulation"})
    provider = TracerProvider(resource=resource,
                              id_generator=SeededIdGenerator(seed) if seed is not None else None)
    if processor is None:
        if exporter is None:
            if endpoint is None:
                raise ValueError("make_provider needs an exporter, an endpoint or a processor")
            exporter = otlp_exporter(endpoint)
        processor = BatchSpanProcessor(exporter, max_queue_size=1 << 18, schedule_delay_millis=200,
                                       max_export_batch_size=2048)
    provider.add_span_processor(processor)
    return provider
