"""The hop's own metrics (self-telemetry), kept in a per-hop registry and served on /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from processor.signals import SIGNAL_ITEMS

# Label values known before the first event: their series are exported at 0 from start, so a healthy hop's
# trouble panels and alerts read 0 rather than "no data" (indistinguishable from a broken scrape).
REFUSAL_REASONS = ("unauthenticated", "malformed", "rejected", "internal_error", "invalid", "backpressure")
EXPORT_FAILURE_REASONS = ("retries_exhausted", "shutdown", "internal")  # plus gRPC codes of non-retryable errors
SPILL_OPS = ("written", "delivered", "corrupt")


@dataclass
class HopMetrics:
    received: Counter
    refused: Counter
    refused_requests: Counter
    exported: Counter
    export_failed: Counter
    export_retries: Counter
    partial_rejected: Counter
    queue_bytes: Gauge
    queue_capacity: Gauge
    spill_bytes: Gauge
    spill_capacity: Gauge
    spill_records: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HopMetrics:
        metrics = cls(
            received=Counter("recohop_received_items", "Items received, by signal", ["signal"],
                             registry=registry),
            refused=Counter("recohop_refused_items", "Items refused at the receiver, by reason",
                            ["signal", "reason"], registry=registry),
            refused_requests=Counter("recohop_refused_requests", "Export requests answered RESOURCE_EXHAUSTED",
                                     ["signal"], registry=registry),
            exported=Counter("recohop_exported_items", "Items delivered to the next hop or sink", ["signal"],
                             registry=registry),
            export_failed=Counter("recohop_export_failed_items", "Items given up on by the exporter",
                                  ["signal", "reason"], registry=registry),
            export_retries=Counter("recohop_export_retries", "Export attempts retried", ["signal"],
                                   registry=registry),
            partial_rejected=Counter("recohop_export_partial_rejected_items",
                                     "Items the next hop rejected in a partial success", ["signal"],
                                     registry=registry),
            queue_bytes=Gauge("recohop_queue_bytes", "Bytes waiting in the exporter queue", registry=registry),
            queue_capacity=Gauge("recohop_queue_capacity_bytes", "Exporter queue budget in bytes",
                                 registry=registry),
            spill_bytes=Gauge("recohop_spill_bytes", "Bytes of segment files in the exporter's disk queue",
                              registry=registry),
            spill_capacity=Gauge("recohop_spill_capacity_bytes", "Disk queue budget in bytes (0: no disk queue)",
                                 registry=registry),
            spill_records=Counter("recohop_spill_records", "Disk queue records written, delivered, corrupt",
                                  ["op"], registry=registry),
        )
        for signal in SIGNAL_ITEMS.values():
            for per_signal in (metrics.received, metrics.refused_requests, metrics.exported, metrics.export_retries,
                               metrics.partial_rejected):
                per_signal.labels(signal)
            for reason in REFUSAL_REASONS:
                metrics.refused.labels(signal, reason)
            for reason in EXPORT_FAILURE_REASONS:
                metrics.export_failed.labels(signal, reason)
        for op in SPILL_OPS:
            metrics.spill_records.labels(op)
        return metrics


def serve_metrics(registry: CollectorRegistry, endpoint: str) -> WSGIServer:
    """Start the /metrics HTTP server; returns the server so the hop can shut it down."""
    host, port = split_endpoint(endpoint)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
