"""A local Prometheus process (Debian's `prometheus`) scraping given targets, with a small query client.

Used by the demo and by tests that check derived metrics and dashboard queries against a real Prometheus.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


@dataclass
class LocalPrometheus:
    proc: subprocess.Popen
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """Instant query; returns the `result` list (each with `metric` and `value`)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query?" + urllib.parse.urlencode(params))
        return body["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        return self._get("/api/v1/query_range?" + urllib.parse.urlencode(params))["data"]["result"]

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body}")
        return body

    def targets_up(self) -> bool:
        try:
            active = self._get("/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            return False
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for_scrape(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.targets_up():
                return
            time.sleep(0.2)
        raise TimeoutError(f"Prometheus targets not up after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(targets: list[str], workdir: Path, scrape_interval: str = "1s",
                     rule_files: list[Path] | None = None, timeout: float = 30.0) -> LocalPrometheus:
    """Start Prometheus on a free loopback port scraping `targets` (host:port of /metrics endpoints)."""
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    rules = "".join(f"\n  - {p}" for p in rule_files or [])
    config = workdir / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n"
        + (f"rule_files:{rules}\n" if rules else "")
        + "scrape_configs:\n  - job_name: recohop\n    static_configs:\n      - targets: ["
        + ", ".join(f"'{t}'" for t in targets) + "]\n")
    port = _free_port()
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
        stdout=log, stderr=subprocess.STDOUT)
    prom = LocalPrometheus(proc, port, workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("prometheus exited:\n" + (workdir / "prometheus.log").read_text(errors="replace"))
        try:
            with urllib.request.urlopen(prom.url + "/-/ready", timeout=1) as response:
                if response.status == 200:
                    return prom
        except OSError:
            pass
        time.sleep(0.2)
    prom.stop()
    raise TimeoutError("prometheus did not become ready")
