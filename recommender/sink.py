"""A minimal OTLP gRPC trace sink that counts spans: the far end for throughput measurements.

`python -m recommender sink --port P` prints `listening on 127.0.0.1:P`, and on SIGTERM/SIGINT
`received N spans in M requests` before exiting.
"""

from __future__ import annotations

import signal
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class SpanCounter:
    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._empty = ExportTraceServiceResponse().SerializeToString()

    def export(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        req = ExportTraceServiceRequest.FromString(raw)
        n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
            self.requests += 1
        return self._empty


def start(counter: SpanCounter, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        _SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(counter.export)}),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def main(port: int) -> int:
    counter = SpanCounter()
    server, bound = start(counter, port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stop.wait()
    server.stop(1).wait()
    print(f"received {counter.spans} spans in {counter.requests} requests", flush=True)
    return 0
