"""One running hop: wires receiver → pipeline → exporter and the /metrics server, and stops them in the
order that loses nothing (stop accepting, flush stages, drain the queue)."""

from __future__ import annotations

import logging

from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from processor.clock import SYSTEM_CLOCK, Clock
from processor.config import HopConfig
from processor.exporter import Exporter
from processor.pipeline import build_pipeline
from processor.receiver import Admission, build_server
from processor.signals import SERVICE_NAMES
from processor.stages.base import StageContext
from processor.telemetry import HopMetrics, serve_metrics, split_endpoint

log = logging.getLogger("recohop")


class Hop:
    """`clock` is the one time source of the stages' timers, the exporter's retries and the stop deadline."""

    def __init__(self, cfg: HopConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.cfg = cfg
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = HopMetrics.create(self.registry)
        self.ctx = StageContext(registry=self.registry, config_file=cfg.source, clock=clock.now,
                                builtin_default=cfg.builtin_default)
        self.exporter = Exporter(cfg.exporter, self.metrics, clock=clock)
        self.pipeline = build_pipeline(cfg.stage_nodes, self.ctx, sink=self.exporter.submit_emitted)
        self.admission = Admission(cfg.receiver.max_pending_requests)
        self.server, self.health, self.port = build_server(cfg.receiver, self.pipeline, self.exporter,
                                                           self.metrics, self.admission)
        self.metrics_server = None
        self.metrics_port: int | None = None

    @property
    def endpoint(self) -> str:
        host, _ = split_endpoint(self.cfg.receiver.endpoint)
        return f"{host}:{self.port}"

    def start(self) -> Hop:
        self.exporter.start()
        self.pipeline.start_timer()
        self.server.start()
        if self.cfg.telemetry.metrics_endpoint:
            self.metrics_server = serve_metrics(self.registry, self.cfg.telemetry.metrics_endpoint)
            self.metrics_port = self.metrics_server.server_port
        log.info("recohop listening on %s, stages: %s, exporting to %s", self.endpoint,
                 ", ".join(s.name for s in self.pipeline.stages) or "(none)",
                 self.cfg.exporter.endpoint or f"file:{self.cfg.exporter.file.path}")
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Graceful stop; returns True when everything accepted was delivered."""
        timeout = self.cfg.shutdown_timeout if timeout is None else timeout
        deadline = self.clock.now() + timeout
        for name in ("", *SERVICE_NAMES.values()):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace=min(2.0, timeout / 2)).wait()
        try:
            self.pipeline.shutdown()
        finally:
            clean = self.exporter.stop(max(0.1, deadline - self.clock.now()))
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        return clean
