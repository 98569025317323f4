"""Trace-id router: what otelcol's loadbalancing exporter (routing_key: traceID) does, in one small server.

Splits each traces/logs request by trace id over N backends so every span (and log record) of a trace reaches
the same recohop instance; metrics go round-robin. Used for the scale-out proof and for running several hop
processes on one machine (one per core) with trace affinity.
"""

from __future__ import annotations

import itertools
from concurrent import futures

import grpc

from processor.retryinfo import retry_status
from processor.signals import METHOD_PATHS, REQUEST_TYPES, RESPONSE_TYPES, SERVICE_NAMES, SIGNALS


def backend_for(trace_id: bytes, backends: int) -> int:
    """Stable choice from the trace id's random low 8 bytes (same for every router instance)."""
    return int.from_bytes(trace_id[8:16], "big") % backends


def split_traces(request, backends: int) -> list:  # noqa: ANN001 - ExportTraceServiceRequest
    parts = [REQUEST_TYPES["traces"]() for _ in range(backends)]
    for rs in request.resource_spans:
        out_rs: list = [None] * backends
        for ss in rs.scope_spans:
            out_ss: list = [None] * backends
            for span in ss.spans:
                b = backend_for(span.trace_id, backends)
                if out_ss[b] is None:
                    if out_rs[b] is None:
                        out_rs[b] = parts[b].resource_spans.add(resource=rs.resource, schema_url=rs.schema_url)
                    out_ss[b] = out_rs[b].scope_spans.add(scope=ss.scope, schema_url=ss.schema_url)
                out_ss[b].spans.append(span)
    return parts


def split_logs(request, backends: int, fallback: int) -> list:  # noqa: ANN001 - ExportLogsServiceRequest
    parts = [REQUEST_TYPES["logs"]() for _ in range(backends)]
    for rl in request.resource_logs:
        out_rl: list = [None] * backends
        for sl in rl.scope_logs:
            out_sl: list = [None] * backends
            for record in sl.log_records:
                b = backend_for(record.trace_id, backends) if len(record.trace_id) == 16 else fallback
                if out_sl[b] is None:
                    if out_rl[b] is None:
                        out_rl[b] = parts[b].resource_logs.add(resource=rl.resource, schema_url=rl.schema_url)
                    out_sl[b] = out_rl[b].scope_logs.add(scope=sl.scope, schema_url=sl.schema_url)
                out_sl[b].log_records.append(record)
    return parts


class Router:
    def __init__(self, listen: str, backends: list[str], timeout: float = 10.0) -> None:
        self.channels = [grpc.insecure_channel(b) for b in backends]
        self.calls = [{s: ch.unary_unary(METHOD_PATHS[s]) for s in SIGNALS} for ch in self.channels]
        self.timeout = timeout
        self._round_robin = itertools.count()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                                  options=[("grpc.max_receive_message_length", 64 << 20)])
        for signal in SIGNALS:
            handler = grpc.unary_unary_rpc_method_handler(self._handler(signal))
            self.server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(SERVICE_NAMES[signal], {"Export": handler}),))
        self.port = self.server.add_insecure_port(listen)

    def _handler(self, signal: str):  # noqa: ANN202
        empty = RESPONSE_TYPES[signal]().SerializeToString()
        n = len(self.channels)

        def handle(raw: bytes, context: grpc.ServicerContext) -> bytes:
            request = REQUEST_TYPES[signal].FromString(raw)
            turn = next(self._round_robin) % n
            if signal == "traces":
                parts = [(i, p) for i, p in enumerate(split_traces(request, n)) if p.resource_spans]
            elif signal == "logs":
                parts = [(i, p) for i, p in enumerate(split_logs(request, n, turn)) if p.resource_logs]
            else:
                parts = [(turn, request)]
            pending = [self.calls[i][signal].future(p.SerializeToString(), timeout=self.timeout) for i, p in parts]
            for future in pending:
                try:
                    future.result()
                except grpc.RpcError as error:
                    # Pass the backend's verdict on, so the client retries (the parts already accepted are
                    # delivered again then: at-least-once, as with the loadbalancing exporter).
                    context.abort_with_status(retry_status(error.code(), error.details() or "backend", 1.0))
            return empty

        return handle

    def start(self) -> Router:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(1).wait()
        for channel in self.channels:
            channel.close()
