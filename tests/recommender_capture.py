"""Recommender traffic recorded once as OTLP request bytes, so the same traffic can be sent to several hops."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class CapturingExporter(SpanExporter):
    """Encodes each exported batch exactly as the OTLP exporter would, and keeps the bytes."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.requests.append(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def capture_recommender_traffic(requests_per_second: float, duration: float, seed: int, faults: str):  # noqa: ANN201
    """(list of ExportTraceServiceRequest bytes, ground truth dict) for one simulator run."""
    from recommender.faults import Faults
    from recommender.simulate import run

    exporter = CapturingExporter()
    truth = run(None, requests_per_second, duration, seed, Faults.parse(faults), exporter=exporter)
    return exporter.requests, truth.to_dict()
