"""The collector chain as users deploy it, as real processes on loopback, from the rendered templates:
otelcol agent → otelcol gateway (loadbalancing, routing_key traceID, static resolver) → recohop ×N (the rendered
production config: limits, redaction, span metrics, tail sampling with its write-ahead log, cardinality; disk
queue) → otelcol backend (file exporter), with Prometheus scraping every recohop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from otelcol_fixture import OtelcolProcess, start_otelcol
from otlp_peers import REPO_ROOT, free_port, scrape_metrics, stop_process

from processor import otlpjson, render
from processor.localprom import LocalPrometheus, start_prometheus
from processor.signals import REQUEST_TYPES

PSEUDONYM_KEY = "chain-test-key-" + "0123456789abcdef" * 4
DECISION_WAIT = "2s"  # the rendered default is 10s; short so the test decides within seconds


def collector_ports() -> dict[str, str]:
    return {"listen_host": "127.0.0.1", "health_check_port": str(free_port()),
            "collector_metrics_port": str(free_port())}


@dataclass
class RecohopProcess:
    """`recohop serve --config recohop.yaml` on the rendered config as it is (its ports are the rendered ones)."""

    name: str
    work: Path
    endpoint: str
    metrics_url: str
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self, timeout: float = 30.0) -> RecohopProcess:
        ready = self.work / "ready"
        ready.unlink(missing_ok=True)
        self.starts += 1
        log = open(self.work / f"recohop.{self.starts}.log", "wb")  # noqa: SIM115 - the process keeps it open
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RECOHOP_PSEUDONYM_KEY": PSEUDONYM_KEY}
        self.proc = subprocess.Popen([sys.executable, "-m", "processor", "serve", "--config",
                                      str(self.work / "recohop.yaml"), "--ready-file", str(ready)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye; what survives is what the WAL and the disk queue hold."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.work.glob("recohop.*.log")))

    def metrics(self) -> dict[str, float]:
        """Every sample on /metrics as 'name{labels}' -> value."""
        return scrape_metrics(self.metrics_url)


def render_recohop(work: Path, name: str, backend: str) -> RecohopProcess:
    """The production recohop profile, rendered for one instance on free ports with its own data directory."""
    port, metrics_port = free_port(), free_port()
    host, backend_port = backend.rsplit(":", 1)
    work.mkdir(parents=True, exist_ok=True)
    render.write(render.render("recohop", {
        "recohop_listen_host": "127.0.0.1", "recohop_otlp_port": str(port), "recohop_metrics_port": str(metrics_port),
        "backend_host": host, "backend_otlp_port": backend_port, "data_dir": str(work / "data"),
        "decision_wait": DECISION_WAIT}), work)
    return RecohopProcess(name, work, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")


@dataclass
class Chain:
    work: Path
    agent_endpoint: str = ""
    backend_dir: Path = field(default_factory=Path)
    recohops: list[RecohopProcess] = field(default_factory=list)
    collectors: dict[str, OtelcolProcess] = field(default_factory=dict)
    prometheus: LocalPrometheus | None = None

    def stop(self) -> None:
        """Front to back, so each stage drains into the next: agent, gateway, recohops, backend."""
        for name in ("agent", "gateway"):
            if name in self.collectors:
                self.collectors[name].stop()
        for hop in self.recohops:
            hop.stop()
        if "backend" in self.collectors:
            self.collectors["backend"].stop()
        if self.prometheus is not None:
            self.prometheus.stop()

    def backend_traces(self) -> list:
        return read_backend_traces(self.backend_dir)

    def hop_sum(self, sample: str) -> float:
        return sum(hop.metrics().get(sample, 0.0) for hop in self.recohops)


def start_chain(binary: Path, work: Path, instances: int = 3) -> Chain:
    chain = Chain(work)
    try:
        backend_ports = collector_ports()
        backend_port = free_port()
        chain.backend_dir = work / "backend-out"
        chain.backend_dir.mkdir(parents=True)
        backend = render.render("backend", {**backend_ports, "backend_otlp_port": str(backend_port),
                                            "backend_exporter": "file", "backend_file_dir": str(chain.backend_dir)})
        chain.collectors["backend"] = start_otelcol(binary, backend["otelcol-backend.yaml"], work / "backend",
                                                    int(backend_ports["health_check_port"]), "backend")
        for i in range(instances):
            chain.recohops.append(render_recohop(work / f"recohop-{i}", f"recohop-{i}",
                                                 f"127.0.0.1:{backend_port}").start())
        chain.prometheus = start_prometheus([h.metrics_url.split("/")[2] for h in chain.recohops], work / "prom")
        gateway_ports, gateway_port = collector_ports(), free_port()
        gateway = render.render("gateway", {**gateway_ports, "gateway_otlp_port": str(gateway_port),
                                            "resolver": "static",
                                            "recohop_hosts": ",".join(h.endpoint for h in chain.recohops)})
        chain.collectors["gateway"] = start_otelcol(binary, gateway["otelcol-gateway.yaml"], work / "gateway",
                                                    int(gateway_ports["health_check_port"]), "gateway")
        agent_ports, agent_port = collector_ports(), free_port()
        agent = render.render("agent", {**agent_ports, "agent_grpc_port": str(agent_port),
                                        "agent_http_port": str(free_port()), "gateway_host": "127.0.0.1",
                                        "gateway_otlp_port": str(gateway_port)})
        chain.collectors["agent"] = start_otelcol(binary, agent["otelcol-agent.yaml"], work / "agent",
                                                  int(agent_ports["health_check_port"]), "agent")
        chain.agent_endpoint = f"127.0.0.1:{agent_port}"
    except BaseException:
        chain.stop()
        raise
    return chain


def read_backend_traces(directory: Path) -> list:
    """Every ExportTraceServiceRequest the backend's file exporter wrote (OTLP/JSON lines, hex ids)."""
    requests = []
    for path in sorted(directory.glob("traces.jsonl*")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                requests.append(otlpjson.loads(line, REQUEST_TYPES["traces"]()))
    return requests


def spans_per_trace(requests: list) -> Counter[bytes]:
    return Counter(span.trace_id for request in requests for rs in request.resource_spans
                   for ss in rs.scope_spans for span in ss.spans)


def span_ids_per_trace(requests: list) -> dict[bytes, set[bytes]]:
    """trace id -> the distinct span ids seen (a span delivered twice counts once here; see spans_per_trace)."""
    out: dict[bytes, set[bytes]] = {}
    for request in requests:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.setdefault(span.trace_id, set()).add(span.span_id)
    return out


def parse_traces(raw_requests: list[bytes]) -> list:
    return [REQUEST_TYPES["traces"].FromString(raw) for raw in raw_requests]


def backend_text(directory: Path) -> str:
    return "".join(path.read_text(encoding="utf-8", errors="replace") for path in sorted(directory.glob("*.jsonl*")))


def raw_attribute_values(requests: list[bytes], keys: tuple[str, ...]) -> set[str]:
    """String values of the given attribute keys in captured (unredacted) traffic: the PII that must not leave."""
    values: set[str] = set()
    for raw in requests:
        request = REQUEST_TYPES["traces"].FromString(raw)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    values.update(a.value.string_value for a in span.attributes
                                  if a.key in keys and a.value.string_value)
    return values


def attribute_values(requests: list, key: str) -> set[str]:
    return {a.value.string_value for request in requests for rs in request.resource_spans for ss in rs.scope_spans
            for span in ss.spans for a in span.attributes if a.key == key}


def json_counts(figures: dict) -> str:
    return json.dumps(figures, sort_keys=True)
