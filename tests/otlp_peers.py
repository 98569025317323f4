"""Real OTLP peers for tests: an in-process capture server (the "downstream" of a hop) and a hop process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from processor.retryinfo import retry_status
from processor.signals import REQUEST_TYPES, RESPONSE_TYPES, SERVICE_NAMES, SIGNALS

REPO_ROOT = Path(__file__).resolve().parent.parent


# Ports for the processes tests start. Not from bind(("127.0.0.1", 0)): that hands out Linux's ephemeral range
# (32768-60999), where every outgoing connection on the machine also takes its source port, so a port freed here
# could be taken before the process under test binds it ("Address already in use"). Below that range, each
# pytest-xdist worker gets a block of its own and hands its ports out in turn, skipping any that is bound now.
PORT_RANGE = (10000, 32000)


def _port_block() -> range:
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    size = (PORT_RANGE[1] - PORT_RANGE[0]) // workers
    return range(PORT_RANGE[0] + worker * size, PORT_RANGE[0] + (worker + 1) * size)


_block = _port_block()
_next_port = _block.start + (os.getpid() * 7919) % len(_block)  # runs right after each other start elsewhere
_port_lock = threading.Lock()


def free_port() -> int:
    """A loopback port nothing is bound to, not handed out before by this process (see PORT_RANGE)."""
    global _next_port
    with _port_lock:
        for _ in range(len(_block)):
            port = _next_port
            _next_port = _block.start + (_next_port + 1 - _block.start) % len(_block)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port in {_block}")


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 20.0,
               seen: Callable[[], object] | None = None) -> None:
    """Poll until `predicate()` is true (delivery through real processes is asynchronous).

    On timeout the failure names `what` was awaited and what was seen: `seen()` when given, else the
    predicate's last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    try:
        last = seen() if seen is not None else value
    except Exception as exc:  # the failure message must not hide behind a second failure
        last = f"<seen() raised {exc!r}>"
    raise AssertionError(f"waited {timeout:g} s for {what}; seen: {last!r}")


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class CaptureServer:
    """An OTLP gRPC server that records every request's raw bytes; can be told to fail."""

    port: int = 0
    raw: dict[str, list[bytes]] = field(default_factory=lambda: {s: [] for s in SIGNALS})
    # Returns a grpc.StatusCode to fail the call with, or None to accept it.
    fail_with: Callable[[str], grpc.StatusCode | None] | None = None
    # Returns the serialized response to answer with (e.g. a partial success), or None for the empty one.
    respond_with: Callable[[str, bytes], bytes | None] | None = None
    # False: accepted requests are not kept (a long run watches them through `respond_with` instead).
    keep_raw: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CaptureServer:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=[("grpc.max_receive_message_length", 64 << 20)])
        for signal in SIGNALS:
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                SERVICE_NAMES[signal], {"Export": grpc.unary_unary_rpc_method_handler(self._handler(signal))}),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()
        return self

    def _handler(self, signal: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        empty = RESPONSE_TYPES[signal]().SerializeToString()

        def handle(raw: bytes, context: grpc.ServicerContext) -> bytes:
            code = self.fail_with(signal) if self.fail_with else None
            if code is not None:
                context.abort_with_status(retry_status(code, "test peer refuses", 0.05))
            if self.keep_raw:
                with self.lock:
                    self.raw[signal].append(raw)
            answer = self.respond_with(signal, raw) if self.respond_with else None
            return empty if answer is None else answer

        return handle

    def requests(self, signal: str) -> list:
        with self.lock:
            return [REQUEST_TYPES[signal].FromString(r) for r in self.raw[signal]]

    def spans(self) -> list:
        return [span for req in self.requests("traces") for rs in req.resource_spans
                for ss in rs.scope_spans for span in ss.spans]

    def wait_for_spans(self, count: int, timeout: float = 20.0) -> None:
        """Until exactly `count` spans have arrived."""
        wait_until(lambda: len(self.spans()) == count, f"{count} spans at the capture server", timeout,
                   seen=lambda: f"{len(self.spans())} spans")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (a hop or collector flushes and drains), SIGKILL only when it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def scrape_metrics(url: str) -> dict[str, float]:
    """Prometheus text at `url` as {'name{label="v",...}': value} (labels sorted); {} when it does not answer."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@dataclass
class HopProcess:
    proc: subprocess.Popen
    endpoint: str
    metrics_url: str | None
    log_path: Path

    def terminate(self, timeout: float = 30.0) -> int:
        return stop_process(self.proc, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def metric_sum(metrics_url: str, prefix: str, timeout: float = 5.0) -> float:
    """Sum of the /metrics samples whose line starts with `prefix` (0 when there are none)."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=timeout) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def wait_until_drained(hop: HopProcess, capture: CaptureServer, timeout: float = 20.0) -> None:
    """Until the hop holds nothing more for `capture`: no trace waits for a decision, the export queue is empty
    and every span it exported has arrived. Only then can a test say that nothing more will arrive."""
    assert hop.metrics_url is not None

    def state() -> tuple[float, float, float, int]:
        url = hop.metrics_url
        assert url is not None
        return (metric_sum(url, "recohop_sampling_buffer_traces "), metric_sum(url, "recohop_queue_bytes "),
                metric_sum(url, 'recohop_exported_items_total{signal="spans"}'), len(capture.spans()))

    def drained() -> bool:
        buffered, queued, exported, arrived = state()
        return buffered == 0 and queued == 0 and exported == arrived

    wait_until(drained, "an empty sampling buffer and export queue, and every exported span arrived", timeout,
               seen=lambda: dict(zip(("buffered_traces", "queue_bytes", "exported_spans", "arrived_spans"),
                                     state(), strict=True)))


def start_hop_process(config_text: str | None, tmp_path: Path, extra_args: list[str] | None = None,
                      env: dict[str, str] | None = None, timeout: float = 20.0) -> HopProcess:
    """Run `recohop serve` as a real process on free ports; `config_text` None runs the built-in default."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "processor", "serve", "--listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", f"127.0.0.1:{free_port()}", "--ready-file", str(tmp_path / "ready")]
    if config_text is not None:
        config_file = tmp_path / "hop.yaml"
        config_file.write_text(config_text)
        args += ["--config", str(config_file)]
    args += extra_args or []
    if "--http-listen" not in args:  # the zero-config default's fixed 4318 would be shared by parallel hops
        args += ["--http-listen", f"127.0.0.1:{free_port()}"]
    log_path = tmp_path / "hop.log"
    proc_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=proc_env, cwd=tmp_path)
    ready = tmp_path / "ready"
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"hop did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    endpoint, _, metrics_port = ready.read_text().strip().partition(" ")
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
    return HopProcess(proc, endpoint, metrics_url, log_path)
