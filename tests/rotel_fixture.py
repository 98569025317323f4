"""A real rotel-agent process (the Rust OTLP collector shipped in the `rotel` wheel) as a stand-in for an
otelcol hop: OTLP gRPC/HTTP in on free loopback ports, OTLP gRPC out to `forward_to`.

    handle = start_rotel("127.0.0.1:4317", tmp_path)
    ... send OTLP to handle.grpc_endpoint ...
    handle.stop()

Stopped by its own pid (never by name); `start_rotel` kills the process itself if it does not come up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import rotel
from otlp_peers import free_port

ROTEL_BIN = Path(os.path.dirname(rotel.__file__)) / "rotel-agent"




def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class RotelHandle:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    forward_to: str
    log_path: Path

    @property
    def grpc_endpoint(self) -> str:
        """host:port for OTLP gRPC clients (the OTel SDK wants http://host:port with insecure=True)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by pid (rotel flushes its batches), SIGKILL if it does not exit in `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> RotelHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_rotel(forward_to: str, tmp_path: Path, timeout: float = 15.0, grpc_port: int | None = None,
                extra_args: list[str] | None = None) -> RotelHandle:
    """Start rotel-agent forwarding over OTLP gRPC (no compression) to `forward_to` (`host:port` or a URL);
    returns once its gRPC port accepts connections, or raises RuntimeError with the end of its log."""
    if not ROTEL_BIN.exists():
        raise RuntimeError(f"rotel-agent binary not found at {ROTEL_BIN} (pip install rotel)")
    target = forward_to if "://" in forward_to else f"http://{forward_to}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    if grpc_port and _accepts(grpc_port):
        # Something else already listens there: waiting for the port would "succeed" on the wrong process.
        raise RuntimeError(f"cannot start rotel-agent: 127.0.0.1:{grpc_port} is already in use")
    grpc_port = grpc_port or free_port()
    http_port = free_port()
    name = f"rotel-{grpc_port}"
    log_path = tmp_path / f"{name}.out"
    args = [str(ROTEL_BIN), "start",
            "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
            "--exporter", "otlp",
            "--otlp-exporter-endpoint", target,
            "--otlp-exporter-compression", "none",
            "--batch-timeout", "50ms",
            "--pid-file", str(tmp_path / f"{name}.pid"),
            "--log-file", str(tmp_path / f"{name}.log"),
            *(extra_args or [])]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    handle = RotelHandle(proc, grpc_port, http_port, target, log_path)
    started = False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"rotel-agent exited with {proc.returncode} before listening on "
                                   f"127.0.0.1:{grpc_port}; log:\n{handle.log()[-2000:]}")
            if _accepts(grpc_port):
                # Make sure the listener is this process and it stays up (a bind error exits right away).
                time.sleep(0.05)
                if proc.poll() is None:
                    started = True
                    return handle
                continue
            time.sleep(0.05)
        raise RuntimeError(f"rotel-agent did not accept connections on 127.0.0.1:{grpc_port} within "
                           f"{timeout}s; log:\n{handle.log()[-2000:]}")
    finally:
        if not started:
            handle.stop(timeout=5.0)
