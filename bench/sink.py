"""The null sink: an OTLP gRPC server (its own process) that answers every Export with an empty response
without parsing it, counting requests and bytes. It is the downstream of every benchmark row and, targeted
directly, measures the load generator's own ceiling.

`/bench.NullSink/Stats` returns its counters as JSON, so the harness can read them over the same port.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent import futures

import grpc

from processor.signals import RESPONSE_TYPES, SERVICE_NAMES, SIGNALS

STATS_PATH = "/bench.NullSink/Stats"


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def handler(self, empty: bytes):  # noqa: ANN201 - grpc behaviour callable
        def export(raw: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.requests += 1
                self.bytes += len(raw)
            return empty

        return export

    def stats(self, _raw: bytes, _context: grpc.ServicerContext) -> bytes:
        with self.lock:
            return json.dumps({"requests": self.requests, "bytes": self.bytes,
                               "cpu_seconds": time.process_time()}).encode()


def serve(listen: str, ready_file: str, workers: int = 8) -> None:
    counters = Counters()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.so_reuseport", 0)])
    for sig in SIGNALS:
        method = grpc.unary_unary_rpc_method_handler(counters.handler(RESPONSE_TYPES[sig]().SerializeToString()))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAMES[sig],
                                                                              {"Export": method}),))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.NullSink", {"Stats": grpc.unary_unary_rpc_method_handler(counters.stats)}),))
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
