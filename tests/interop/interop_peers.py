"""Helpers of the otelcol interop tests: a TCP tap that reads the gRPC messages a client sends (to see gzip on the
wire), Prometheus text scraping, and OTLP requests flattened to comparable leaves."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from processor import otlpjson

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_PADDED = 0x0, 0x8


@dataclass
class WireMessage:
    """One gRPC request message as it crossed the wire: when its last byte passed (time.monotonic()), compressed
    flag, wire length and its decoded body."""

    at: float
    stream_id: int
    compressed: bool
    wire_bytes: int
    body: bytes


@dataclass
class _Stream:
    buffer: bytearray = field(default_factory=bytearray)


class GrpcWireTap:
    """A loopback TCP proxy in front of a gRPC server that decodes the client's HTTP/2 DATA frames into gRPC
    messages (decompressing gzip ones), so a test sees what a real client put on the wire, retries included.
    Only the client-to-server direction is parsed; bytes are relayed unchanged both ways."""

    def __init__(self, target: str) -> None:
        self.target_host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.messages: list[WireMessage] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="wire-tap", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> GrpcWireTap:
        self._thread.start()
        return self

    def snapshot(self) -> list[WireMessage]:
        with self._lock:
            return list(self.messages)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((self.target_host, self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, parse: bool) -> None:
        pending = bytearray()
        streams: dict[int, _Stream] = {}
        preface_seen = not parse
        try:
            while True:
                chunk = source.recv(1 << 16)
                if not chunk:
                    break
                sink.sendall(chunk)
                if not parse:
                    continue
                pending += chunk
                if not preface_seen:
                    if len(pending) < len(H2_PREFACE):
                        continue
                    if bytes(pending[:len(H2_PREFACE)]) != H2_PREFACE:
                        self.errors.append("the client did not speak HTTP/2 (no preface)")
                        parse = False
                        continue
                    del pending[:len(H2_PREFACE)]
                    preface_seen = True
                self._frames(pending, streams)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _frames(self, pending: bytearray, streams: dict[int, _Stream]) -> None:
        """Consume every complete HTTP/2 frame in `pending`; DATA payloads feed their stream's gRPC messages."""
        while len(pending) >= 9:
            length = int.from_bytes(pending[0:3], "big")
            if len(pending) < 9 + length:
                return
            frame_type, flags = pending[3], pending[4]
            stream_id = int.from_bytes(pending[5:9], "big") & 0x7FFFFFFF
            payload = bytes(pending[9:9 + length])
            del pending[:9 + length]
            if frame_type != H2_DATA:
                continue
            if flags & H2_PADDED:
                payload = payload[1:len(payload) - payload[0]]
            stream = streams.setdefault(stream_id, _Stream())
            stream.buffer += payload
            self._messages(stream_id, stream)

    def _messages(self, stream_id: int, stream: _Stream) -> None:
        buffer = stream.buffer
        while len(buffer) >= 5:
            size = int.from_bytes(buffer[1:5], "big")
            if len(buffer) < 5 + size:
                return
            compressed = buffer[0] == 1
            raw = bytes(buffer[5:5 + size])
            del buffer[:5 + size]
            try:
                body = gzip.decompress(raw) if compressed else raw
            except OSError as exc:
                self.errors.append(f"stream {stream_id}: compressed message is not gzip ({exc})")
                body = b""
            with self._lock:
                self.messages.append(WireMessage(time.monotonic(), stream_id, compressed, size, body))

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(value for key, value in samples.items()
               if key.partition("{")[0] == name and all(w in key for w in wanted))


NESTING = {"resourceSpans": ("scopeSpans", "spans"), "resourceLogs": ("scopeLogs", "logRecords"),
           "resourceMetrics": ("scopeMetrics", "metrics")}
POINT_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "summary")


def leaves(request: Any) -> list[tuple[str, ...]]:
    """Every span, log record or metric data point of an export request, each with its resource and scope (and
    metric), as canonical JSON texts: two requests hold the same telemetry iff their sorted leaves are equal,
    however the items are grouped into requests, resources and scopes. Empty messages are left out: whether an
    encoder writes an empty `status` or `resource` is not data (Go's pdata always writes them, the SDK not)."""
    tree = _pruned(otlpjson.to_tree(request))
    out: list[tuple[str, ...]] = []
    for top, entries in tree.items():
        scope_key, item_key = NESTING[top]
        for resource in entries:
            r = _canonical({k: v for k, v in resource.items() if k != scope_key})
            for scope in resource.get(scope_key, []):
                s = _canonical({k: v for k, v in scope.items() if k != item_key})
                for item in scope.get(item_key, []):
                    kind = next((k for k in POINT_KINDS if k in item), None)
                    if kind is None:
                        out.append((r, s, _canonical(item)))
                        continue
                    shell = _canonical({**item, kind: {k: v for k, v in item[kind].items() if k != "dataPoints"}})
                    points = item[kind].get("dataPoints", [])
                    out.extend((r, s, shell, _canonical(p)) for p in points)
                    if not points:
                        out.append((r, s, shell))
    return out


def _pruned(node: Any) -> Any:
    """`node` without object members whose value is an empty object (list items stay: their position counts)."""
    if isinstance(node, dict):
        pruned = {k: _pruned(v) for k, v in node.items()}
        return {k: v for k, v in pruned.items() if v != {}}
    if isinstance(node, list):
        return [_pruned(item) for item in node]
    return node


def _canonical(node: Any) -> str:
    return json.dumps(node, sort_keys=True)


def log_entries(log_text: str) -> list[dict]:
    """The collector's log lines (service.telemetry.logs.encoding: json) as objects; other lines are skipped."""
    entries = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries
