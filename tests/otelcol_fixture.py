"""The real OpenTelemetry Collector as a test peer: the distribution of collector-config/otelcol/builder.yaml,
built by `make otelcol` into a cache outside git, run as a process on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from otlp_peers import REPO_ROOT, stop_process

BUILD_SCRIPT = REPO_ROOT / "collector-config" / "otelcol" / "build.sh"
# `make test` sets it: there a missing collector is a failure, not a skip.
REQUIRE_ENV = "RECOHOP_REQUIRE_OTELCOL"


def otelcol_binary() -> Path:
    """The built collector binary. Skips when it is not built (fails under RECOHOP_REQUIRE_OTELCOL=1)."""
    where = subprocess.run(["bash", str(BUILD_SCRIPT), "--path"], capture_output=True, text=True, check=True)
    path = Path(where.stdout.strip())
    if path.exists():
        return path
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"the collector is not built ({path} missing): run `make otelcol`")
    pytest.skip("the collector is not built: run `make otelcol`")


def validate(binary: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """`otelcol validate --config FILE`: the collector's own verdict on a config (components, settings, wiring)."""
    return subprocess.run([str(binary), "validate", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)


@dataclass
class OtelcolProcess:
    proc: subprocess.Popen
    config: Path
    log_path: Path
    health_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the collector drains its queues), SIGKILL only when it does not exit in time."""
        return stop_process(self.proc, timeout)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_otelcol(binary: Path, config_text: str, work: Path, health_port: int, name: str,
                  timeout: float = 60.0) -> OtelcolProcess:
    """Run `otelcol --config` on `config_text` and wait until its health_check extension answers 200."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / f"{name}.yaml"
    config.write_text(config_text)
    log_path = work / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([str(binary), "--config", str(config)], stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=work)
    collector = OtelcolProcess(proc, config, log_path, f"http://127.0.0.1:{health_port}/")
    deadline = time.monotonic() + timeout
    while not _healthy(collector.health_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            collector.stop(5)
            raise RuntimeError(f"otelcol {name} did not become healthy at {collector.health_url} "
                               f"(exit {proc.returncode}):\n{collector.log()[-3000:]}")
        time.sleep(0.1)
    return collector
