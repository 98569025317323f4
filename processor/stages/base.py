"""The one interface every pipeline stage implements, and what a stage may use from the hop.

A stage receives whole OTLP export requests (protobuf messages, never dicts) and returns what goes on.
The pipeline calls each stage under that stage's own lock (`Stage.lock`), so a stage owns its state without
locks of its own; different stages may work on different requests at the same time (a C walk that releases the
GIL in one stage lets another stage use the second core).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from processor.clock import SYSTEM_CLOCK

TracesRequest = ExportTraceServiceRequest
MetricsRequest = ExportMetricsServiceRequest
LogsRequest = ExportLogsServiceRequest


def as_trace_bytes(request: TracesRequest | bytes) -> bytes:
    """A traces entry (`Emitted.traces`: a message or its serialized bytes) as bytes."""
    return request if isinstance(request, bytes) else request.SerializeToString()


def as_trace_message(request: TracesRequest | bytes) -> TracesRequest:
    """A traces entry as a message (parsed when it is bytes)."""
    return TracesRequest.FromString(request) if isinstance(request, bytes) else request


@dataclass
class Emitted:
    """What a stage sends on outside of a request: timer flushes, shutdown flushes, derived metrics.
    A traces entry is a request message or its serialized bytes (see `Stage.takes_trace_bytes`).
    `trace_spans`, when it is as long as `traces`, holds each entry's span count (None: not known), so the
    exporter need not parse serialized requests to count them; a stage that knows the counts of what it emits
    may fill it, the pipeline fills it for what it passes on."""

    traces: list[TracesRequest | bytes] = field(default_factory=list)
    metrics: list[MetricsRequest] = field(default_factory=list)
    logs: list[LogsRequest] = field(default_factory=list)
    trace_spans: list[int | None] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.traces or self.metrics or self.logs)

    def span_counts(self) -> list[int | None]:
        """One span count (or None) per traces entry."""
        return self.trace_spans if len(self.trace_spans) == len(self.traces) else [None] * len(self.traces)

    def extend(self, other: Emitted | None) -> None:
        if other:
            self.trace_spans = self.span_counts() + other.span_counts()
            self.traces.extend(other.traces)
            self.metrics.extend(other.metrics)
            self.logs.extend(other.logs)


class Backpressure(Exception):
    """Raised by a stage that cannot take more data now; the receiver answers RESOURCE_EXHAUSTED."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Rejected(Exception):
    """Raised by a stage for input it will never accept; the receiver answers INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


DecisionListener = Callable[[bytes, bool, str], None]


class DecisionBatch(Protocol):
    """A batch of decisions as (trace id, kept, deciding policy), read as a listener needs them: every one, or
    only those of the traces it waits on (a batch holds thousands; building every row costs the GIL)."""

    def every(self) -> Iterable[tuple[bytes, bool, str]]: ...

    def among(self, trace_ids: Collection[bytes]) -> list[tuple[bytes, bool, str]]: ...


class ListedDecisions:
    """A `DecisionBatch` of decisions already listed."""

    def __init__(self, rows: Sequence[tuple[bytes, bool, str]]) -> None:
        self.rows = rows

    def every(self) -> Iterable[tuple[bytes, bool, str]]:
        return self.rows

    def among(self, trace_ids: Collection[bytes]) -> list[tuple[bytes, bool, str]]:
        return [row for row in self.rows if row[0] in trace_ids]


BatchListener = Callable[[DecisionBatch], None]


class DecisionBus:
    """Tail-sampling decisions, published to stages that need them (e.g. exemplars of kept traces only).
    A batch listener gets each batch in one call (decisions come tens of thousands a second)."""

    def __init__(self) -> None:
        self._listeners: list[DecisionListener] = []
        self._batch_listeners: list[BatchListener] = []

    def subscribe(self, listener: DecisionListener) -> None:
        self._listeners.append(listener)

    def subscribe_batch(self, listener: BatchListener) -> None:
        self._batch_listeners.append(listener)

    def publish(self, trace_id: bytes, kept: bool, policy: str) -> None:
        for listener in self._listeners:
            listener(trace_id, kept, policy)
        if self._batch_listeners:
            batch = ListedDecisions(((trace_id, kept, policy),))
            for batch_listener in self._batch_listeners:
                batch_listener(batch)

    def has_listeners(self) -> bool:
        return bool(self._listeners or self._batch_listeners)

    def publish_batch(self, batch: DecisionBatch) -> None:
        """A batch of decisions (what `publish` does per decision; a batch listener reads only what it needs)."""
        if self._listeners:
            for args in batch.every():
                for listener in self._listeners:
                    listener(*args)
        for batch_listener in self._batch_listeners:
            batch_listener(batch)


@dataclass
class Rejections:
    """Items a stage refused from the request being processed: the receiver reports them to the client as
    OTLP partial success (rejected_spans / rejected_data_points / rejected_log_records + a message)."""

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, count: int, reason: str) -> None:
        self.count += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count

    def message(self) -> str:
        return "; ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items()))


@dataclass
class StageContext:
    """What the hop hands a stage when building it."""

    registry: CollectorRegistry
    decisions: DecisionBus = field(default_factory=DecisionBus)
    config_file: Path = Path("<built-in default>")
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("recohop"))
    clock: Callable[[], float] = SYSTEM_CLOCK.now
    # Set by the hop when the stage config came from the zero-config default (e.g. throwaway HMAC key allowed).
    builtin_default: bool = False
    # True when stages are built only to validate their config (`recohop check`, a reload's first step): nothing
    # with side effects (write-ahead logs, directories) is opened.
    validate_only: bool = False
    # Per thread: several requests go through the stages at once, each on its receiver thread.
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    @property
    def rejections(self) -> Rejections:
        """Refusals of part of the request this thread is processing (reset by the pipeline per request)."""
        found = getattr(self._local, "rejections", None)
        if found is None:
            found = self._local.rejections = Rejections()
        return found

    @rejections.setter
    def rejections(self, value: Rejections) -> None:
        self._local.rejections = value

    def reject(self, count: int, reason: str) -> None:
        """Refuse `count` items of the current request without failing the rest (OTLP partial success)."""
        self.rejections.add(count, reason)


class Stage:
    """Base stage: passes everything on unchanged. Override only the signals the stage works on."""

    name = "stage"
    # False when the stage never changes the requests it passes on (lets the hop forward the original bytes).
    mutates = True
    # Seconds between `flush` calls; None: never called on a timer.
    flush_interval: float | None = None

    # True when the stage implements `on_trace_bytes`: the pipeline then hands it serialized requests, so a
    # chain of such stages never parses or re-serializes a request in Python.
    takes_trace_bytes = False
    # True when every traces request this stage returns for a request holds exactly the spans of that request
    # (values may change, spans are never added or removed): the span count then travels on with it to the
    # exporter. A request returned unchanged (the same object) keeps its count whatever this says.
    keeps_span_count = False

    @property
    def lock(self) -> threading.RLock:
        """Held by the pipeline around every call into this stage. A stage entered from elsewhere as well (a
        DecisionBus listener, a /metrics collector reading its state) takes it there too."""
        found = self.__dict__.get("_stage_lock")
        if found is None:
            found = self.__dict__.setdefault("_stage_lock", threading.RLock())
        return found

    def admit_trace_bytes(self, raw: bytes) -> int | None:
        """Optional, for a stage with `takes_trace_bytes`: when it is the first stage that reads traces, the
        receiver calls this instead of parsing the request. Return the request's span count when the stage
        vouches that the bytes parse as an ExportTraceServiceRequest (its own later `on_trace_bytes` on these
        bytes may reuse the work), None when it cannot (the receiver then parses and refuses what is
        malformed). Called without any lock, on several receiver threads at once."""
        return None

    def prepare_trace_bytes(self, raw: bytes) -> None:
        """Optional, for a stage with `takes_trace_bytes`: called by the pipeline with a request this stage's
        `on_trace_bytes` is about to get, on the same thread, just before the stage's lock is taken. Work that
        reads nothing the stage's calls change (a parse) can be done here without the GIL, overlapping other
        requests inside the stage; the stage's `on_trace_bytes` of these bytes may then reuse it. Called on
        several receiver threads at once."""

    def prepare_job(self, raw: bytes) -> object | None:
        """Optional, like `prepare_trace_bytes`: the same work as a native job (`processor/native/nogil_job.h`),
        set up and held for the stage's `on_trace_bytes` of these bytes but not run. The pipeline runs the jobs of
        consecutive stages that see the same bytes in one release of the GIL, then calls the stages. None: no
        job (the pipeline then calls `prepare_trace_bytes`)."""
        return None

    def job_done(self, raw: bytes, job: object) -> list[bytes] | None:
        """Optional, with `prepare_job`: called by the pipeline once the job has run, with the very bytes the
        stage's `on_trace_bytes` would get, before it takes the stage's lock. Return the stage's output when the
        job did all of the stage's work on this request (the lock is then not taken, nor `on_trace_bytes`
        called); None to go on as usual. Called on several receiver threads at once."""
        return None

    def on_traces(self, request: TracesRequest) -> list[TracesRequest]:
        return [request]

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        """`on_traces` on a serialized ExportTraceServiceRequest (what stages with `takes_trace_bytes` use)."""
        return [out.SerializeToString() for out in self.on_traces(TracesRequest.FromString(raw))]

    def on_metrics(self, request: MetricsRequest) -> list[MetricsRequest]:
        return [request]

    def on_logs(self, request: LogsRequest) -> list[LogsRequest]:
        return [request]

    def flush(self, now: float) -> Emitted | None:
        """Called every `flush_interval` seconds with `ctx.clock()`; returns data to send on."""
        return None

    def shutdown(self) -> Emitted | None:
        """Called once on stop: hand over everything still held (decide buffered traces, final metrics)."""
        return None
