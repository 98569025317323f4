"""The load generator: client processes replaying pre-serialized requests over several gRPC streams (or OTLP/HTTP
keep-alive connections, one per stream).

Each client process has its own channels (separate connections) and `streams` threads, each keeping one
unary call in flight with a generic `unary_unary(path)`: bytes in, bytes out, nothing re-encoded. Only
acknowledged calls that complete inside the measurement window count.

For overload runs every attempt inside the window is also counted (`offered_*`, acked or refused), and each
refusal's status code is tallied along with whether it carried google.rpc.RetryInfo (`retry_info`).
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.workload import TraceIdRewriter, read_requests
from processor.retryinfo import retry_delay
from processor.signals import METHOD_PATHS

RETRY_PAUSE = 0.005


@dataclass
class ClientPlan:
    endpoint: str
    workload: Path
    spans: list[int]
    streams: int
    channels: int
    warmup: float
    duration: float
    fresh_ids: bool = True
    # "grpc" (OTLP/gRPC Export) or "http" (OTLP/HTTP POST /v1/traces, application/x-protobuf, keep-alive).
    transport: str = "grpc"
    # Fresh ids in both halves of the trace id (TraceIdRewriter): needed where a peer keys on part of the id.
    fresh_right_half: bool = False


@dataclass
class ClientResult:
    acked_spans: int = 0
    acked_requests: int = 0
    sent_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    # Every call started inside the window, acknowledged or refused: the load actually offered.
    offered_spans: int = 0
    offered_requests: int = 0
    # Refusals (inside the window) whose trailers carried RetryInfo, by status code name.
    retry_info: dict[str, int] = field(default_factory=dict)

    def merge(self, other: ClientResult) -> None:
        self.acked_spans += other.acked_spans
        self.acked_requests += other.acked_requests
        self.sent_bytes += other.sent_bytes
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        self.latencies.extend(other.latencies)
        self.cpu_seconds += other.cpu_seconds
        self.offered_spans += other.offered_spans
        self.offered_requests += other.offered_requests
        for code, n in other.retry_info.items():
            self.retry_info[code] = self.retry_info.get(code, 0) + n


class Refused(Exception):
    """A call the server answered with an error: its code name, and whether it said when to retry."""

    def __init__(self, code: str, retry_info: bool) -> None:
        super().__init__(code)
        self.code = code
        self.retry_info = retry_info


def grpc_sender(call: grpc.UnaryUnaryMultiCallable) -> Callable[[bytes], None]:
    def send(payload: bytes) -> None:
        try:
            call(payload, timeout=30.0)
        except grpc.RpcError as error:
            raise Refused(error.code().name, retry_delay(error) is not None) from None  # type: ignore[attr-defined]

    return send


def http_sender(endpoint: str) -> Callable[[bytes], None]:
    """One keep-alive connection (per stream: http.client connections are not shared between threads)."""
    host, _, port = endpoint.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30.0)
    headers = {"Content-Type": "application/x-protobuf"}

    def send(payload: bytes) -> None:
        try:
            conn.request("POST", "/v1/traces", body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            raise Refused("HTTP_CONNECTION", False) from None
        if response.status != 200:
            raise Refused(f"HTTP_{response.status}", response.getheader("Retry-After") is not None)

    return send


def _stream(plan: ClientPlan, start_at: float, client: int, stream: int, call: Callable[[bytes], None],
            requests: list[bytes], rewriters: list[TraceIdRewriter] | None, result: ClientResult,
            lock: threading.Lock) -> None:
    window_start = start_at + plan.warmup
    window_end = window_start + plan.duration
    n = len(requests)
    i = (stream * 7919 + client * 104729) % n
    loop = 0
    acked = reqs = sent = offered = offered_reqs = 0
    lat: list[float] = []
    errors: dict[str, int] = {}
    with_retry_info: dict[str, int] = {}
    stream_id = client * plan.streams + stream
    while True:
        if rewriters is not None:
            payload = rewriters[i].replay(((stream_id & 0xFFF) << 20) | (loop & 0xFFFFF))
        else:
            payload = requests[i]
        began = time.monotonic()
        if began >= window_end:
            break
        in_window = began >= window_start
        if in_window:
            offered += plan.spans[i]
            offered_reqs += 1
        try:
            call(payload)
        except Refused as refused:
            errors[refused.code] = errors.get(refused.code, 0) + 1
            if in_window and refused.retry_info:
                with_retry_info[refused.code] = with_retry_info.get(refused.code, 0) + 1
            time.sleep(RETRY_PAUSE)
            continue
        done = time.monotonic()
        if window_start <= done < window_end:
            acked += plan.spans[i]
            reqs += 1
            sent += len(payload)
            lat.append(done - began)
        i += 1
        if i == n:
            i = 0
            loop += 1
    with lock:
        result.merge(ClientResult(acked, reqs, sent, errors, lat, offered_spans=offered,
                                  offered_requests=offered_reqs, retry_info=with_retry_info))


def run_client(index: int, plan: ClientPlan, out: mp.Queue, go: Any, start_at: Any) -> None:
    """Entry point of one client process: prepares, reports ready, waits for `go`, then sends until the
    window (from the shared `start_at`, a time.monotonic() value: system-wide on Linux) ends."""
    try:
        _run_client(index, plan, out, go, start_at)
    except Exception as exc:  # reported to the harness instead of a silent hang
        out.put(("error", f"client {index}: {exc!r}"))


def _run_client(index: int, plan: ClientPlan, out: mp.Queue, go: Any, start_at: Any) -> None:
    requests = read_requests(plan.workload)
    rewriters = [TraceIdRewriter(raw, plan.fresh_right_half) for raw in requests] if plan.fresh_ids else None
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20),
               ("grpc.use_local_subchannel_pool", 1)]
    channels = [] if plan.transport == "http" else [grpc.insecure_channel(plan.endpoint, options)
                                                    for _ in range(plan.channels)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=15)
    if plan.transport == "http":
        calls = [http_sender(plan.endpoint) for _ in range(plan.streams)]
    else:
        calls = [grpc_sender(channel.unary_unary(METHOD_PATHS["traces"])) for channel in channels]
    result = ClientResult()
    lock = threading.Lock()
    out.put(("ready", index))
    go.wait()
    begin = start_at.value
    threads = [threading.Thread(target=_stream, daemon=True,
                                args=(plan, begin, index, s, calls[s % len(calls)], requests, rewriters,
                                      result, lock))
               for s in range(plan.streams)]
    time.sleep(max(0.0, begin - time.monotonic()))
    for t in threads:
        t.start()
    time.sleep(max(0.0, begin + plan.warmup - time.monotonic()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, begin + plan.warmup + plan.duration - time.monotonic()))
    cpu1 = time.process_time()
    for t in threads:
        t.join(timeout=35)
    result.cpu_seconds = cpu1 - cpu0
    for channel in channels:
        channel.close()
    out.put(result)


class Clients:
    """Client processes for one benchmark row: start, wait until all are ready, go, collect."""

    def __init__(self, n: int, plan: ClientPlan) -> None:
        ctx = mp.get_context("spawn")
        self.plan = plan
        self.out: mp.Queue = ctx.Queue()
        self.go = ctx.Event()
        self.start_at = ctx.Value("d", 0.0)
        self.procs = [ctx.Process(target=run_client, args=(i, plan, self.out, self.go, self.start_at),
                                  name=f"bench-client-{i}", daemon=True) for i in range(n)]
        for p in self.procs:
            p.start()

    def launch(self, timeout: float = 60.0) -> float:
        """Wait until every client is connected, then start them together; returns the start time."""
        for _ in self.procs:
            tag, detail = self.out.get(timeout=timeout)
            if tag != "ready":
                self.close()
                raise RuntimeError(str(detail))
        self.start_at.value = time.monotonic() + 0.05
        self.go.set()
        return self.start_at.value

    def collect(self, grace: float = 45.0) -> ClientResult:
        """Every client's result, as each ends its window; gives up `grace` seconds after the window's end
        (a client joins its streams for up to 35 s: the last calls may still be in flight)."""
        total = ClientResult()
        window_end = self.start_at.value + self.plan.warmup + self.plan.duration
        deadline = max(time.monotonic(), window_end) + grace
        for _ in self.procs:
            item = self.out.get(timeout=max(1.0, deadline - time.monotonic()))
            if not isinstance(item, ClientResult):
                self.close()
                raise RuntimeError(str(item[1]))
            total.merge(item)
        self.close()
        return total

    def close(self) -> None:
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
