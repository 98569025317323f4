"""Delivers kept data to the next hop: a bounded in-memory queue measured in bytes, consumer threads,
retries with exponential backoff + jitter honouring the server's RetryInfo.

The queue holds serialized export requests, so a full queue is a byte budget, not a message count. When
it is full the receiver answers RESOURCE_EXHAUSTED (backpressure) instead of letting memory grow.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

import grpc

from processor.config import ExporterConfig
from processor.filesink import FileSink
from processor.pipeline import count_items
from processor.retryinfo import retry_delay
from processor.signals import METHOD_PATHS, RESPONSE_TYPES, rejected_items
from processor.stages.base import Emitted
from processor.telemetry import SIGNAL_ITEMS, HopMetrics

log = logging.getLogger("recohop.exporter")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED}


@dataclass
class QueuedExport:
    signal: str
    payload: bytes
    items: int


class SendError(Exception):
    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class GrpcTransport:
    """OTLP/gRPC client sending already-serialized requests (no re-encoding on the way out)."""

    def __init__(self, cfg: ExporterConfig) -> None:
        assert cfg.endpoint is not None
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]
        compression = grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression
        if cfg.tls is not None or not cfg.insecure:
            tls = cfg.tls
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca_file.read_bytes() if tls and tls.ca_file else None,
                private_key=tls.key_file.read_bytes() if tls and tls.key_file else None,
                certificate_chain=tls.cert_file.read_bytes() if tls and tls.cert_file else None,
            )
            self.channel = grpc.secure_channel(cfg.endpoint, creds, options, compression=compression)
        else:
            self.channel = grpc.insecure_channel(cfg.endpoint, options, compression=compression)
        self.timeout = cfg.timeout
        token = os.environ.get(cfg.bearer_token_env, "") if cfg.bearer_token_env else ""
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.calls = {signal: self.channel.unary_unary(path) for signal, path in METHOD_PATHS.items()}

    def send(self, item: QueuedExport) -> int:
        """Send one request; returns the number of items the peer rejected (partial success)."""
        try:
            raw = self.calls[item.signal](item.payload, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            raise SendError(code.name.lower(), code in RETRYABLE, retry_delay(error)) from None
        if not raw:
            return 0
        return rejected_items(item.signal, RESPONSE_TYPES[item.signal].FromString(raw))

    def close(self) -> None:
        self.channel.close()


class FileTransport:
    def __init__(self, cfg: ExporterConfig) -> None:
        self.sink = FileSink(cfg.file.path, cfg.file.max_bytes, cfg.file.backups)

    def send(self, item: QueuedExport) -> int:
        try:
            self.sink.write(item.signal, item.payload)
        except OSError as exc:
            raise SendError("file_error", True, None) from exc
        return 0

    def close(self) -> None:
        self.sink.close()


class QueueFull(Exception):
    pass


class Exporter:
    def __init__(self, cfg: ExporterConfig, metrics: HopMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.transport = GrpcTransport(cfg) if cfg.endpoint else FileTransport(cfg)
        self._queue: deque[QueuedExport] = deque()
        self._bytes = 0
        self._in_flight = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        metrics.queue_capacity.set(cfg.queue_max_bytes)

    # --- producer side (receiver threads, pipeline flushes) ---
    def has_room(self) -> bool:
        return self._bytes < self.cfg.queue_max_bytes

    def submit(self, signal: str, payload: bytes, items: int, force: bool = False) -> None:
        """Queue one serialized request. `force` is for data already accepted from a client (stage flushes,
        shutdown): it may overshoot the budget by one request rather than lose data."""
        with self._cond:
            if not force and self._bytes >= self.cfg.queue_max_bytes:
                raise QueueFull()
            self._queue.append(QueuedExport(signal, payload, items))
            self._bytes += len(payload)
            self.metrics.queue_bytes.set(self._bytes)
            self._cond.notify()

    def submit_emitted(self, emitted: Emitted, force: bool = True) -> None:
        for signal in ("traces", "metrics", "logs"):
            for request in getattr(emitted, signal):
                items = count_items(signal, request)
                if items:
                    self.submit(signal, request.SerializeToString(), items, force=force)

    # --- consumer side ---
    def start(self) -> None:
        for i in range(self.cfg.consumers):
            thread = threading.Thread(target=self._consume, name=f"recohop-export-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _consume(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._coalesce(self._queue.popleft())
                self._in_flight += 1
            try:
                self._deliver(item)
            except Exception as exc:  # a bug or a garbage response must not kill this consumer
                self.metrics.export_failed.labels(SIGNAL_ITEMS[item.signal], "internal").inc(item.items)
                log.error("export failed unexpectedly (%s); %d items counted as failed", type(exc).__name__,
                          item.items)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._bytes -= len(item.payload)
                    self.metrics.queue_bytes.set(self._bytes)
                    self._cond.notify_all()

    def _coalesce(self, item: QueuedExport) -> QueuedExport:
        """Join queued requests of the same signal into one call (caller holds the lock). Serialized export
        requests concatenate into one valid request: their only field, resource_*, is repeated and appends."""
        limit = self.cfg.send_batch_max_bytes
        if not self._queue or self._queue[0].signal != item.signal or len(item.payload) >= limit:
            return item
        parts, size, items = [item.payload], len(item.payload), item.items
        while self._queue and self._queue[0].signal == item.signal and size + len(self._queue[0].payload) <= limit:
            following = self._queue.popleft()
            parts.append(following.payload)
            size += len(following.payload)
            items += following.items
        return item if len(parts) == 1 else QueuedExport(item.signal, b"".join(parts), items)

    def _deliver(self, item: QueuedExport) -> None:
        retry = self.cfg.retry
        started = time.monotonic()
        backoff = retry.initial_interval
        items_name = SIGNAL_ITEMS[item.signal]
        while True:
            try:
                rejected = self.transport.send(item)
            except SendError as err:
                elapsed = time.monotonic() - started
                if not err.retryable or elapsed >= retry.max_elapsed_time or self._hard_stop():
                    reason = err.reason if not err.retryable else "retries_exhausted"
                    self.metrics.export_failed.labels(items_name, reason).inc(item.items)
                    log.warning("dropping %d %s after export error %s", item.items, items_name, err.reason)
                    return
                self.metrics.export_retries.labels(items_name).inc()
                delay = err.retry_after if err.retry_after is not None else backoff * random.uniform(0.5, 1.5)
                delay = min(delay, retry.max_interval, max(0.0, retry.max_elapsed_time - elapsed))
                backoff = min(backoff * 2, retry.max_interval)
                self._sleep(delay)
                continue
            if rejected:
                self.metrics.partial_rejected.labels(items_name).inc(rejected)
                log.warning("next hop rejected %d of %d %s (partial success)", rejected, item.items, items_name)
            self.metrics.exported.labels(items_name).inc(item.items - rejected)
            return

    def _hard_stop(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    _deadline: float | None = None

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._hard_stop():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def queued_bytes(self) -> int:
        return self._bytes

    def stop(self, timeout: float) -> bool:
        """Deliver what is queued within `timeout`, then stop. Returns True when nothing was left behind."""
        self._deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, self._deadline - time.monotonic()) + 0.5)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for item in left:
            self.metrics.export_failed.labels(SIGNAL_ITEMS[item.signal], "shutdown").inc(item.items)
        busy = self._in_flight
        self.transport.close()
        return not left and busy == 0
