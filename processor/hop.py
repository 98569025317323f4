"""One running hop: wires receiver → pipeline → exporter and the /metrics server, and stops them in the
order that loses nothing (stop accepting, flush stages, drain the queue)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric

from processor.clock import SYSTEM_CLOCK, Clock
from processor.config import HopConfig
from processor.config_node import ConfigError
from processor.exporter import Exporter
from processor.http_receiver import OtlpHttpServer, build_http_server, serve_in_thread
from processor.pipeline import Pipeline, build_stages
from processor.receiver import Admission, build_handlers, build_server
from processor.signals import SERVICE_NAMES
from processor.stages.base import Stage, StageContext
from processor.telemetry import HopMetrics, serve_metrics, split_endpoint

log = logging.getLogger("recohop")


class CurrentStageMetrics:
    """The stages' metrics on the hop's /metrics: each generation of stages (a reload builds new ones) registers
    in a registry of its own, and this collector shows the one running now."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class Hop:
    """`clock` is the one time source of the stages' timers, the exporter's retries and the stop deadline."""

    def __init__(self, cfg: HopConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.cfg = cfg
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = HopMetrics.create(self.registry)
        self.reloads = Counter("recohop_config_reloads", "Config reloads (SIGHUP) by result", ["result"],
                               registry=self.registry)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self.exporter = Exporter(cfg.exporter, self.metrics, clock=clock)
        stages, self.ctx = self._build_stages(cfg)
        self.stage_metrics = CurrentStageMetrics(self.ctx.registry)
        self.registry.register(self.stage_metrics)
        self.pipeline = Pipeline(stages, self.ctx, sink=self.exporter.submit_emitted)
        self._draining = threading.Event()
        self.admission = Admission(cfg.receiver.max_pending_requests)
        # One handler per signal behind both transports: the same admission, auth, counting and pipeline.
        self.handlers = build_handlers(cfg.receiver, self.pipeline, self.exporter, self.metrics, self.admission)
        self.server, self.health, self.port = build_server(cfg.receiver, self.pipeline, self.exporter,
                                                           self.metrics, self.admission, self.handlers)
        self.http: OtlpHttpServer | None = self._build_http()
        self.metrics_server = None
        self.metrics_port: int | None = None

    def _build_http(self) -> OtlpHttpServer | None:
        http = self.cfg.receiver.http
        if http is None:
            return None
        try:
            return build_http_server(self.cfg.receiver, self.handlers)
        except OSError as exc:
            if not http.optional:
                raise OSError(f"cannot listen on {http.endpoint} (receiver.http.endpoint): {exc.strerror}") from None
            log.warning("OTLP/HTTP receiver off: cannot listen on %s (%s); pass --http-listen HOST:PORT or off",
                        http.endpoint, exc.strerror, extra={"endpoint": http.endpoint})
            return None

    def _build_stages(self, cfg: HopConfig, validate_only: bool = False) -> tuple[list[Stage], StageContext]:
        ctx = StageContext(registry=CollectorRegistry(), config_file=cfg.source, clock=self.clock.now,
                           builtin_default=cfg.builtin_default, validate_only=validate_only)
        return build_stages(cfg.stage_nodes, ctx), ctx

    def reload(self, load: Callable[[], HopConfig]) -> bool:
        """SIGHUP: re-read the config and the policy, redaction and derivation files it names. Everything is
        validated before anything changes; a bad file keeps the running stages, logs why and counts a failed
        reload. Then the running stages hand over what they hold (buffered traces are decided, as at shutdown:
        nothing is lost) and the new ones take over. Receiver and exporter settings need a restart."""
        try:
            cfg = load()
            self._build_stages(cfg, validate_only=True)
        except ConfigError as exc:
            self.reloads.labels("failed").inc()
            log.error("reload refused, the running config stays: %s", exc)
            return False
        for section in ("receiver", "exporter", "telemetry"):
            if getattr(cfg, section) != getattr(self.cfg, section):
                log.warning("reload: %s settings changed; they take effect at the next restart", section)
        previous = self.cfg.stage_nodes
        took: list[bool] = []

        def build() -> tuple[list[Stage], StageContext]:
            try:
                built = self._build_stages(cfg)
                took.append(True)
                return built
            except ConfigError as exc:  # e.g. a directory that went away between validation and now
                log.error("reload failed while building the stages (%s); running the previous config again", exc)
                self.cfg.stage_nodes = previous
                return self._build_stages(self.cfg)

        self.pipeline.replace(build)
        self.ctx = self.pipeline.ctx
        self.stage_metrics.registry = self.ctx.registry
        if not took:
            self.reloads.labels("failed").inc()
            return False
        self.cfg.stage_nodes = cfg.stage_nodes
        self.reloads.labels("ok").inc()
        log.info("reloaded %s: stages %s", cfg.source, ", ".join(s.name for s in self.pipeline.stages) or "(none)")
        return True

    @property
    def endpoint(self) -> str:
        host, _ = split_endpoint(self.cfg.receiver.endpoint)
        return f"{host}:{self.port}"

    @property
    def http_endpoint(self) -> str | None:
        """The OTLP/HTTP receiver's bound host:port, None when it is off."""
        if self.http is None:
            return None
        host = str(self.http.server_address[0])
        return f"[{host}]:{self.http.server_port}" if ":" in host else f"{host}:{self.http.server_port}"

    def start(self) -> Hop:
        self.exporter.start()
        self.pipeline.start_timer()
        self.server.start()
        if self.http is not None:
            serve_in_thread(self.http)
        if self.cfg.telemetry.metrics_endpoint:
            self.metrics_server = serve_metrics(self.registry, self.cfg.telemetry.metrics_endpoint)
            self.metrics_port = self.metrics_server.server_port
        stages = [s.name for s in self.pipeline.stages]
        export_to = self.cfg.exporter.endpoint or f"file:{self.cfg.exporter.file.path}"
        log.info("recohop listening on %s (OTLP/gRPC)%s, stages: %s, exporting to %s", self.endpoint,
                 f" and {self.http_endpoint} (OTLP/HTTP)" if self.http is not None else "",
                 ", ".join(stages) or "(none)", export_to,
                 extra={"grpc_endpoint": self.endpoint, "http_endpoint": self.http_endpoint, "stages": stages,
                        "export_to": export_to})
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Graceful stop; returns True when everything accepted was delivered."""
        timeout = self.cfg.shutdown_timeout if timeout is None else timeout
        for name in ("", *SERVICE_NAMES.values()):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        drain = self.cfg.receiver.drain_window
        if drain > 0:  # still accepting while gateways notice NOT_SERVING and move away
            log.info("draining: health NOT_SERVING, still accepting for %.1f s", drain)
            self.clock.wait(self._draining, drain)
        deadline = self.clock.now() + timeout
        grace = min(2.0, timeout / 2)
        if self.http is not None:
            self.http.begin_stop()  # new requests get 503 + Retry-After; those in flight finish below
        self.server.stop(grace=grace).wait()
        if self.http is not None and not self.http.wait_idle(grace):
            log.warning("OTLP/HTTP requests still in flight after %.1f s of grace", grace)
        try:
            self.pipeline.shutdown()
        finally:
            clean = self.exporter.stop(max(0.1, deadline - self.clock.now()))
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        return clean
