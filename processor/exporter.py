"""Delivers kept data to the next hop: a bounded in-memory queue measured in bytes, consumer threads,
retries with exponential backoff + jitter honouring the server's RetryInfo.

The queue holds serialized export requests, so a full queue is a byte budget, not a message count. When
it is full the receiver answers RESOURCE_EXHAUSTED (backpressure) instead of letting memory grow.

With `exporter.spill` a full memory queue overflows to a disk queue (`processor/spillqueue.py`). Order rule:
once anything is on disk, new requests go to disk too until the disk queue has drained; consumers take memory
first (it is always older than what is on disk), then disk. Only when both are full does the receiver push back.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import grpc

from processor.clock import SYSTEM_CLOCK, Clock
from processor.config import ExporterConfig
from processor.filesink import FileSink
from processor.retryinfo import retry_delay
from processor.signals import METHOD_PATHS, RESPONSE_TYPES, SIGNAL_ITEMS, count_items, rejected_items
from processor.spillqueue import SpillFull, SpillQueue
from processor.stages.base import Emitted
from processor.telemetry import HopMetrics

log = logging.getLogger("recohop.exporter")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED}


@dataclass
class QueuedExport:
    signal: str
    payload: bytes
    items: int
    # Set when read from the disk queue: acknowledged there once the request is settled.
    spill_ticket: object | None = None


class SendError(Exception):
    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class Transport(Protocol):
    def send(self, item: QueuedExport) -> int:
        """Send one request; returns the items the peer rejected (partial success) or raises SendError."""
        ...

    def close(self) -> None: ...


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
    """`transport` defaults to the one `cfg` names; `clock` and `rng` (backoff jitter) are injectable so the
    retry and shutdown timing is tested on a driven clock."""

    def __init__(self, cfg: ExporterConfig, metrics: HopMetrics, *, transport: Transport | None = None,
                 clock: Clock = SYSTEM_CLOCK, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.transport: Transport = transport or (GrpcTransport(cfg) if cfg.endpoint else FileTransport(cfg))
        self.clock = clock
        self.rng = rng or random.Random()
        # Set by stop() once the shutdown deadline is known: ends a backoff that would outlast it.
        self._stop_requested = threading.Event()
        self._uninterruptible = threading.Event()  # never set: a wait that only time ends
        self._queue: deque[QueuedExport] = deque()
        self._bytes = 0
        self._in_flight = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        # Memory requests interrupted by the shutdown deadline: persisted to the disk queue at stop.
        self._unsettled: list[QueuedExport] = []
        metrics.queue_capacity.set(cfg.queue_max_bytes)
        self.spill: SpillQueue | None = None
        if cfg.spill is not None:
            self.spill = SpillQueue(cfg.spill.dir, cfg.spill.max_bytes, cfg.spill.fsync,
                                    on_count=lambda op, n: metrics.spill_records.labels(op).inc(n))
            metrics.spill_capacity.set(cfg.spill.max_bytes)
            metrics.spill_bytes.set(self.spill.disk_bytes)
            if self.spill.pending:
                log.info("disk queue holds %d requests from before; delivering them first", self.spill.pending)

    # --- producer side (receiver threads, pipeline flushes) ---
    def has_room(self) -> bool:
        spill = self.spill
        if spill is None:
            return self._bytes < self.cfg.queue_max_bytes
        if spill.pending:  # new data must follow what is on disk
            return spill.has_room()
        return self._bytes < self.cfg.queue_max_bytes or spill.has_room()

    def submit(self, signal: str, payload: bytes, items: int, force: bool = False) -> None:
        """Queue one serialized request. `force` is for data already accepted from a client (stage flushes,
        shutdown): it may overshoot the budget by one request rather than lose data."""
        with self._cond:
            if self.spill is not None and (self.spill.pending or self._bytes >= self.cfg.queue_max_bytes):
                if self._spill(signal, payload, items, force):
                    return
            if not force and self._bytes >= self.cfg.queue_max_bytes:
                raise QueueFull()
            self._queue.append(QueuedExport(signal, payload, items))
            self._bytes += len(payload)
            self.metrics.queue_bytes.set(self._bytes)
            self._cond.notify()

    def _spill(self, signal: str, payload: bytes, items: int, force: bool) -> bool:
        """Append to the disk queue (caller holds the lock, so the order decision and the write are one step).
        False when the disk cannot take it and the caller must use memory (forced) or refuse."""
        assert self.spill is not None
        try:
            self.spill.append(signal, payload, items, force=force)
        except SpillFull:
            raise QueueFull() from None
        except OSError as exc:  # disk full or gone: keep the data in memory rather than lose it
            log.error("disk queue write failed (%s); keeping the request in memory", exc.strerror or exc)
            return False
        self.metrics.spill_bytes.set(self.spill.disk_bytes)
        self._cond.notify()
        return True

    def submit_emitted(self, emitted: Emitted, force: bool = True) -> None:
        for request, spans in zip(emitted.traces, emitted.span_counts(), strict=True):
            self._submit_counted("traces", request, spans, force)
        for signal in ("metrics", "logs"):
            for request in getattr(emitted, signal):
                self._submit_counted(signal, request, None, force)

    def _submit_counted(self, signal: str, request: object, items: int | None, force: bool) -> None:
        """Queues one request of `items` items (counted here when not known)."""
        if items is None:
            items = count_items(signal, request)
        if items:
            payload = request if isinstance(request, bytes) else request.SerializeToString()  # type: ignore[attr-defined]
            self.submit(signal, payload, items, force=force)

    # --- consumer side ---
    def start(self) -> None:
        for i in range(self.cfg.consumers):
            thread = threading.Thread(target=self._consume, name=f"recohop-export-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _consume(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping and not (self.spill and self.spill.pending):
                    self._cond.wait()
                if self._queue and not self._hard_stop():
                    item = self._coalesce(self._queue.popleft())
                elif self.spill is not None and self.spill.pending and not self._hard_stop():
                    spilled = self._read_spill()
                    if spilled is None:
                        continue
                    item = spilled
                else:
                    return
                self._in_flight += 1
            settled = True
            try:
                settled = self._deliver(item)
            except Exception as exc:  # a bug or a garbage response must not kill this consumer
                self.metrics.export_failed.labels(SIGNAL_ITEMS[item.signal], "internal").inc(item.items)
                log.error("export failed unexpectedly (%s); %d items counted as failed", type(exc).__name__,
                          item.items)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    if item.spill_ticket is not None:
                        if settled:  # unsettled ones stay on disk and are read again on the next start
                            self._ack_spill(item.spill_ticket)
                    else:
                        self._bytes -= len(item.payload)
                        self.metrics.queue_bytes.set(self._bytes)
                        if not settled:
                            self._unsettled.append(item)
                    self._cond.notify_all()

    def _read_spill(self) -> QueuedExport | None:
        """The next run of disk records as one call, joined like `_coalesce` does (caller holds the lock)."""
        assert self.spill is not None
        batch = self.spill.read(self.cfg.send_batch_max_bytes)
        if batch is None:
            self.metrics.spill_bytes.set(self.spill.disk_bytes)
            return None
        records, ticket = batch
        payload = records[0].payload if len(records) == 1 else b"".join(r.payload for r in records)
        return QueuedExport(records[0].signal, payload, sum(r.items for r in records), ticket)

    def _ack_spill(self, ticket: object) -> None:
        assert self.spill is not None
        self.spill.ack(ticket)
        self.metrics.spill_bytes.set(self.spill.disk_bytes)

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

    def _deliver(self, item: QueuedExport) -> bool:
        """Send with retries. True once settled (delivered, or dropped and counted); False when the shutdown
        deadline interrupted a retryable failure and a disk queue can keep the request for the next start."""
        retry = self.cfg.retry
        started = self.clock.now()
        backoff = retry.initial_interval
        items_name = SIGNAL_ITEMS[item.signal]
        while True:
            try:
                rejected = self.transport.send(item)
            except SendError as err:
                elapsed = self.clock.now() - started
                hard_stop = self._hard_stop()
                if not err.retryable or elapsed >= retry.max_elapsed_time or hard_stop:
                    if err.retryable and self.spill is not None and hard_stop:
                        return False
                    if not err.retryable:
                        reason = err.reason
                    elif hard_stop and elapsed < retry.max_elapsed_time:  # the shutdown deadline cut them short
                        reason = "shutdown"
                    else:
                        reason = "retries_exhausted"
                    self.metrics.export_failed.labels(items_name, reason).inc(item.items)
                    log.warning("dropping %d %s after export error %s", item.items, items_name, err.reason)
                    return True
                self.metrics.export_retries.labels(items_name).inc()
                delay = err.retry_after if err.retry_after is not None else backoff * self.rng.uniform(0.5, 1.5)
                delay = min(delay, retry.max_interval, max(0.0, retry.max_elapsed_time - elapsed))
                backoff = min(backoff * 2, retry.max_interval)
                self._sleep(delay)
                continue
            if rejected:
                self.metrics.partial_rejected.labels(items_name).inc(rejected)
                log.warning("next hop rejected %d of %d %s (partial success)", rejected, item.items, items_name)
            self.metrics.exported.labels(items_name).inc(item.items - rejected)
            return True

    def _hard_stop(self) -> bool:
        return self._deadline is not None and self.clock.now() >= self._deadline

    _deadline: float | None = None

    def _sleep(self, seconds: float) -> None:
        """Back off for `seconds`, but not past the shutdown deadline (which stop() may set meanwhile)."""
        end = self.clock.now() + seconds
        if self._deadline is None and not self.clock.wait(self._stop_requested, seconds):
            return
        assert self._deadline is not None  # stop() sets it before it sets _stop_requested
        left = min(end, self._deadline) - self.clock.now()
        if left > 0:
            self.clock.wait(self._uninterruptible, left)

    def queued_bytes(self) -> int:
        return self._bytes

    def stop(self, timeout: float) -> bool:
        """Deliver what is queued within `timeout`, then stop. Returns True when nothing was left behind."""
        self._deadline = self.clock.now() + timeout
        self._stop_requested.set()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, self._deadline - self.clock.now()) + 0.5)
        with self._cond:
            left = self._unsettled + list(self._queue)
            self._queue.clear()
            self._unsettled.clear()
            busy = self._in_flight
        if self.spill is not None:
            return self._persist_at_stop(left) and busy == 0
        for item in left:
            self.metrics.export_failed.labels(SIGNAL_ITEMS[item.signal], "shutdown").inc(item.items)
        self.transport.close()
        return not left and busy == 0

    def _persist_at_stop(self, left: list[QueuedExport]) -> bool:
        """Write what memory still holds to the disk queue (after what is already there: nothing is lost, but it
        follows older spilled data), close it, and say whether nothing at all was left undelivered."""
        assert self.spill is not None
        self.transport.close()
        for item in left:
            try:
                self.spill.append(item.signal, item.payload, item.items, force=True)
            except OSError as exc:
                self.metrics.export_failed.labels(SIGNAL_ITEMS[item.signal], "shutdown").inc(item.items)
                log.error("disk queue write failed at shutdown (%s); %d items counted as failed",
                          exc.strerror or exc, item.items)
        remaining = self.spill.disk_bytes
        if remaining:
            log.info("shutdown: %d bytes kept in the disk queue for the next start", remaining)
        self.metrics.spill_bytes.set(remaining)
        self.spill.close()
        return not remaining
