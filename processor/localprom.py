"""A local Prometheus process (Debian's `prometheus`) scraping given targets, with a small query client.

Used by the demo and by the tests that check derived metrics and dashboard queries against a real Prometheus:
`start_prometheus(["127.0.0.1:9464"], workdir)` -> handle with `.url`, `.query(promql)`, `.scalar`,
`.wait_for(promql, predicate)`, `.exemplars(promql)`, `.wait_for_exemplars(promql)` and `.stop()` (stops its
own pid). Free port, its own data dir, 1 s scrapes, exemplar storage on.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str | None:
    return PROMETHEUS if Path(PROMETHEUS).exists() else shutil.which("prometheus")


@dataclass
class LocalPrometheus:
    proc: subprocess.Popen
    url: str
    data_dir: Path
    log_path: Path

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} failed: {body}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query (now, or at unix time `at`); returns the result vector (`metric`, `value` [ts, "v"])."""
        if at is None:
            return self.api("/api/v1/query", query=promql)["result"]
        return self.api("/api/v1/query", query=promql, time=f"{at:.3f}")["result"]

    def scalar(self, promql: str) -> float | None:
        """The value of a query that returns at most one series (None when it returns none)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{promql} returned {len(result)} series")
        return float(result[0]["value"][1])

    def wait_for(self, promql: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0,
                 what: str | None = None) -> list[dict[str, Any]]:
        """Poll until `predicate(result)` holds (scrapes are asynchronous); returns that result. Raises
        TimeoutError naming what was awaited (`what`, else the query) and the last result seen."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g} s for {what or promql}; last result of {promql}: "
                                   f"{result}\nPrometheus log:\n{self.log()[-1500:]}")
            time.sleep(0.2)

    def exemplars(self, promql: str, since: float = 0.0) -> list[dict[str, Any]]:
        return self.api("/api/v1/query_exemplars", query=promql, start=since or time.time() - 3600,
                        end=time.time() + 60)

    def wait_for_exemplars(self, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll until Prometheus holds exemplars for `promql` (the scrape that carries them is asynchronous)."""
        deadline = time.monotonic() + timeout
        while not (found := self.exemplars(promql)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g} s for exemplars of {promql}; none stored")
            time.sleep(0.2)
        return found

    def targets_up(self) -> bool:
        active = self.api("/api/v1/targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for_scrape(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.targets_up():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus targets not up after {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _target(target: str) -> tuple[str, str]:
    """`host:port` or `http://host:port/path` -> (host:port, metrics path)."""
    if "://" not in target:
        return target, "/metrics"
    parsed = urllib.parse.urlparse(target)
    return parsed.netloc, parsed.path or "/metrics"


def start_prometheus(scrape_targets: list[str], workdir: Path, scrape_interval: str = "1s",
                     rule_files: list[Path] | None = None, timeout: float = 30.0) -> LocalPrometheus:
    """Start Prometheus scraping `scrape_targets` (one job per metrics path); waits until it is ready."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus not installed (Debian: apt-get install prometheus)")
    work = (workdir / f"prometheus-{free_port()}").resolve()  # the process runs with cwd=work
    data = work / "data"
    data.mkdir(parents=True)
    jobs: dict[str, list[str]] = {}
    for target in scrape_targets:
        address, path = _target(target)
        jobs.setdefault(path, []).append(address)
    config = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                         "scrape_timeout": scrape_interval},
              "scrape_configs": [{"job_name": f"target{i}", "metrics_path": path,
                                  "static_configs": [{"targets": addresses}]}
                                 for i, (path, addresses) in enumerate(jobs.items())]}
    if rule_files:
        config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    config_file = work / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log_path = work / "prometheus.log"
    args = [binary, f"--config.file={config_file}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage",
            "--storage.tsdb.retention.time=1h", "--log.level=warn"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=work)
    handle = LocalPrometheus(proc, f"http://127.0.0.1:{port}", data, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{handle.log()}")
        try:
            with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return handle
        except OSError:
            pass
        if time.monotonic() > deadline:
            handle.stop()
            raise TimeoutError(f"prometheus not ready after {timeout}s:\n{handle.log()}")
        time.sleep(0.1)
