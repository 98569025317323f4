"""The null sink: an OTLP gRPC server (its own process) that answers every Export with an empty response
without parsing it, counting requests and bytes. It is the downstream of every benchmark row and, targeted
directly, measures the load generator's own ceiling.

`/bench.NullSink/Stats` returns its counters as JSON, so the harness can read them over the same port.

Capture mode (`--capture GROUND_TRUTH.json`, used by `python -m bench peer`): trace requests are parsed and
every trace that arrives is recorded once, so the harness can compare what two pipelines kept. The ground
truth maps bytes 4-11 of each special trace id (hex) to its kind; the replay client rewrites only bytes 0-3
(and 12-15), so a replayed special trace is still recognised. Stats then also count kept traces and
kept special traces per kind, and `/bench.NullSink/Kept` returns the kept trace ids (hex).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processor.signals import RESPONSE_TYPES, SERVICE_NAMES, SIGNALS

STATS_PATH = "/bench.NullSink/Stats"
KEPT_PATH = "/bench.NullSink/Kept"


class Capture:
    """Which traces arrived (capture mode): distinct trace ids, and special ones by kind."""

    def __init__(self, ground_truth: Path) -> None:
        data = json.loads(ground_truth.read_text())
        self.special = {bytes.fromhex(k): v for k, v in data.get("specials", {}).items()}
        self.kept: set[bytes] = set()
        self.spans = 0
        self.by_kind: dict[str, int] = {}

    def add(self, raw: bytes) -> None:
        """Called under the counters' lock."""
        req = ExportTraceServiceRequest.FromString(raw)
        ids = set()
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                self.spans += len(ss.spans)
                ids.update(span.trace_id for span in ss.spans)
        for tid in ids - self.kept:
            self.kept.add(tid)
            kind = self.special.get(tid[4:12])
            if kind is not None:
                self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


class Counters:
    def __init__(self, capture: Capture | None = None) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.capture = capture

    def handler(self, empty: bytes, traces: bool = False):  # noqa: ANN201 - grpc behaviour callable
        capture = self.capture if traces else None

        def export(raw: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.requests += 1
                self.bytes += len(raw)
                if capture is not None:
                    capture.add(raw)
            return empty

        return export

    def stats(self, _raw: bytes, _context: grpc.ServicerContext) -> bytes:
        with self.lock:
            out: dict[str, object] = {"requests": self.requests, "bytes": self.bytes,
                                      "cpu_seconds": time.process_time()}
            if self.capture is not None:
                out.update(kept_traces=len(self.capture.kept), kept_spans=self.capture.spans,
                           kept_special=dict(self.capture.by_kind))
            return json.dumps(out).encode()

    def kept(self, _raw: bytes, _context: grpc.ServicerContext) -> bytes:
        with self.lock:
            ids = sorted(t.hex() for t in self.capture.kept) if self.capture is not None else []
        return json.dumps(ids).encode()


def serve(listen: str, ready_file: str, workers: int = 8, capture: Path | None = None) -> None:
    counters = Counters(Capture(capture) if capture is not None else None)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.so_reuseport", 0)])
    for sig in SIGNALS:
        method = grpc.unary_unary_rpc_method_handler(
            counters.handler(RESPONSE_TYPES[sig]().SerializeToString(), traces=sig == "traces"))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAMES[sig],
                                                                              {"Export": method}),))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.NullSink", {"Stats": grpc.unary_unary_rpc_method_handler(counters.stats),
                           "Kept": grpc.unary_unary_rpc_method_handler(counters.kept)}),))
    port = server.add_insecure_port(listen)
    server.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open(ready_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"{port}\n")
    os.replace(ready_file + ".tmp", ready_file)
    while not stop.wait(0.5):
        pass
    server.stop(0).wait()


def read_stats(endpoint: str, timeout: float = 5.0) -> dict[str, float]:
    with grpc.insecure_channel(endpoint) as channel:
        raw = channel.unary_unary(STATS_PATH)(b"", timeout=timeout)
    return json.loads(raw)


def read_kept(endpoint: str, timeout: float = 30.0) -> set[bytes]:
    """The trace ids a capture-mode sink has seen."""
    options = [("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(endpoint, options) as channel:
        raw = channel.unary_unary(KEPT_PATH)(b"", timeout=timeout)
    return {bytes.fromhex(h) for h in json.loads(raw)}
