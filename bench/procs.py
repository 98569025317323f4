"""The processes a benchmark row runs: null sink, recohop hop, rotel, the OpenTelemetry Collector. Each is
started on free loopback ports and stopped by its own pid; CPU time and RSS come from /proc/<pid>."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROFILE_ENV = "BENCH_PROFILE_HOP"  # a directory: hop rows run under cProfile (bench/profile_hop.py)
# Directories put before the repo on the hop's PYTHONPATH: to try a modified copy of processor/ in /tmp.
HOP_PATH_ENV = "BENCH_HOP_PYTHONPATH"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (`comm`; Python threads show as the interpreter's name, gRPC core
    threads under their own names), summed over threads of the same name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat), to see load from outside the bench."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    endpoint: str
    log_path: Path
    metrics_url: str | None = None
    http_endpoint: str | None = None  # a hop's OTLP/HTTP receiver

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def scrape(self) -> str:
        if not self.metrics_url:
            return ""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return resp.read().decode()


def _env(hop: bool = False) -> dict[str, str]:
    parts = [os.environ.get(HOP_PATH_ENV, "")] if hop else []
    parts += [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in parts if p)}


def _wait_ready(ready: Path, proc: subprocess.Popen, log_path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            raise RuntimeError(f"{proc.args[2:4]} did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return ready.read_text().strip()


def start_sink(workdir: Path, capture: Path | None = None) -> Proc:
    """The null sink; with `capture` (a ground-truth file, see bench/sink.py) it also parses trace requests
    and records which traces arrived."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "sink.ready"
    ready.unlink(missing_ok=True)
    log_path = workdir / "sink.log"
    args = [sys.executable, "-m", "bench", "sink", "--listen", "127.0.0.1:0", "--ready-file", str(ready)]
    if capture is not None:
        args += ["--capture", str(capture)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=workdir)
    port = _wait_ready(ready, proc, log_path)
    return Proc("sink", proc, f"127.0.0.1:{port}", log_path)


def start_hop(workdir: Path, name: str, config: Path | None, forward: str,
              env: dict[str, str] | None = None) -> Proc:
    """`recohop serve` (built-in default when `config` is None) forwarding to `forward`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "hop.ready"
    ready.unlink(missing_ok=True)
    log_path = workdir / "hop.log"
    http_endpoint = f"127.0.0.1:{free_port()}"  # never the zero-config default's fixed 4318
    serve_args = ["serve", "--listen", f"127.0.0.1:{free_port()}", "--http-listen", http_endpoint,
                  "--forward", forward, "--metrics-listen", f"127.0.0.1:{free_port()}", "--ready-file", str(ready)]
    if config is not None:
        serve_args += ["--config", str(Path(config).resolve())]
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        out = Path(profile_dir).resolve() / f"{name}.prof"
        args = [sys.executable, "-m", "bench.profile_hop", str(out), *serve_args]
    else:
        args = [sys.executable, "-m", "processor", *serve_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**_env(hop=True), **(env or {})},
                                cwd=workdir)
    endpoint, _, metrics_port = _wait_ready(ready, proc, log_path).partition(" ")
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
    return Proc(name, proc, endpoint, log_path, metrics_url, http_endpoint)


def rotel_binary() -> Path | None:
    try:
        import rotel
    except ImportError:
        found = shutil.which("rotel-agent")
        return Path(found) if found else None
    path = Path(rotel.__file__).parent / "rotel-agent"
    return path if path.exists() else None


def start_rotel(workdir: Path, forward: str) -> Proc:
    binary = rotel_binary()
    if binary is None:
        raise RuntimeError("rotel-agent not found (pip install rotel)")
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    log_path = workdir / "rotel.log"
    args = [str(binary), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{http_port}", "--exporter", "otlp",
            "--otlp-exporter-endpoint", f"http://{forward}", "--otlp-exporter-compression", "none",
            "--pid-file", str(workdir / "rotel.pid"), "--log-file", str(log_path)]
    with open(workdir / "rotel.stdout", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    wait_for_port(grpc_port, proc)
    return Proc("rotel", proc, f"127.0.0.1:{grpc_port}", workdir / "rotel.stdout")


OTELCOL_BUILD_SCRIPT = REPO_ROOT / "collector-config" / "otelcol" / "build.sh"


def otelcol_binary() -> Path | None:
    """The collector built by `make otelcol` (collector-config/otelcol/build.sh), or None when not built."""
    try:
        where = subprocess.run(["bash", str(OTELCOL_BUILD_SCRIPT), "--path"], capture_output=True, text=True,
                               timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(where.stdout.strip())
    return path if where.stdout.strip() and path.is_file() else None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_otelcol(workdir: Path, name: str, config_text: str, endpoint: str, health_port: int,
                  metrics_port: int | None, env: dict[str, str] | None = None,
                  feature_gates: list[str] | None = None, timeout: float = 60.0) -> Proc:
    """`otelcol --config` on `config_text` (already rendered), ready once its health_check answers 200.
    `env` is added to the environment (the config reads secrets as ${env:...}, so they stay out of the file)."""
    binary = otelcol_binary()
    if binary is None:
        raise RuntimeError("the collector is not built: run `make otelcol`")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.yaml"
    config.write_text(config_text)
    log_path = workdir / f"{name}.log"
    args = [str(binary), "--config", str(config)]
    if feature_gates:
        args.append("--feature-gates=" + ",".join(feature_gates))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                env={**os.environ, **(env or {})})
    health = f"http://127.0.0.1:{health_port}/"
    deadline = time.monotonic() + timeout
    while not _http_ok(health):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            raise RuntimeError(f"otelcol {name} did not become healthy (exit {proc.returncode}):\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
    return Proc(name, proc, endpoint, log_path, metrics_url)


def metric_sum(text: str, name: str, label: str | None = None) -> dict[str, float]:
    """Values of one Prometheus metric from exposition text, keyed by one label's value ('' when none)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, labels = head.partition("{")
        if metric != name:
            continue
        key = ""
        if label and labels:
            for part in labels.rstrip("}").split(","):
                k, _, v = part.partition("=")
                if k == label:
                    key = v.strip('"')
        out[key] = out.get(key, 0.0) + float(value)
    return out
