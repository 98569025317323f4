"""The write-ahead log wired beside the trace store: what enters the stage is logged before the store takes it,
the decisions of each stage call are logged as one record, compaction snapshots what the store still holds,
and recovery replays a log into the store (decisions into its cache first, then the requests through the
stage's intake). Without a `wal:` setting every call here is a no-op. The log's format: `wal.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processor.sampling.policies.policyset import Decision, PolicySet
from processor.sampling.store import TraceStore
from processor.sampling.wal import LOGS, TRACES, Decided, WriteAheadLog
from processor.sampling.wire import field


class StoreLog:
    def __init__(self, configured: bool) -> None:
        self.wal: WriteAheadLog | None = None  # set once recovery is done: replayed data is not logged again
        # Decisions of this call, logged as one record (None: no write-ahead log configured).
        self.pending: list[Decided] | None = [] if configured else None

    @property
    def wants_decisions(self) -> bool:
        return self.pending is not None

    def append_traces(self, raw: bytes) -> None:
        if self.wal is not None:
            self.wal.append_traces(raw)

    def append_logs(self, request: ExportLogsServiceRequest) -> None:
        if self.wal is not None:
            self.wal.append_logs(request.SerializeToString())

    def decided(self, ids: Iterable[bytes], kept: Iterable[bool], policies: Iterable[str]) -> None:
        if self.pending is not None:
            self.pending.extend(zip(ids, kept, policies, strict=True))

    def commit(self) -> None:
        """Write the decisions made since the last commit."""
        pending = self.pending
        if pending and self.wal is not None:
            self.wal.append_decisions(pending)
            pending.clear()

    def tick(self, now: float) -> None:
        if self.wal is not None:
            self.wal.tick(now)

    def close(self, clean: bool) -> None:
        """At shutdown: a clean close (nothing left buffered) means a restart replays nothing."""
        if self.wal is not None:
            self.commit()
            self.wal.close(clean=clean)
            self.wal = None

    def recover(self, wal: WriteAheadLog, store: TraceStore, policies: PolicySet,
                intake_traces: Callable[[bytes], object], intake_logs: Callable[[ExportLogsServiceRequest], object]
                ) -> None:
        """Replay the log of a hop that did not stop cleanly: its decisions into the store's cache first, then
        its requests through the stage's intake (not logged again); then log from here on."""
        ths = {p.name: p.th for p in policies.keeps}
        made: dict[tuple[bool, str], Decision] = {}
        for trace_id, kept, policy in wal.replay_decisions():
            decision = made.get((kept, policy))
            if decision is None:
                decision = made[(kept, policy)] = Decision(kept, policy, ths.get(policy) if kept else None)
            store.cache.put(trace_id, decision)
        for kind, payload in wal.replay_data():
            try:
                if kind == TRACES:
                    wal.metrics.replayed_spans.inc(sum(len(ss.spans) for rs in
                                                       ExportTraceServiceRequest.FromString(payload).resource_spans
                                                       for ss in rs.scope_spans))
                    intake_traces(payload)
                else:
                    logs = ExportLogsServiceRequest.FromString(payload)
                    wal.metrics.replayed_logs.inc(sum(len(sl.log_records) for rl in logs.resource_logs
                                                      for sl in rl.scope_logs))
                    intake_logs(logs)
            except DecodeError:
                wal.metrics.corrupt.inc()
        wal.start(lambda: snapshot(store), lambda: store.nbytes)
        self.wal = wal
        self.commit()


def snapshot(store: TraceStore) -> Iterator[tuple[int, bytes]]:
    """The still-buffered spans and logs as request entries (one ResourceSpans/ResourceLogs per trace and
    group), for compaction of the write-ahead log."""
    for is_logs, group, chunk in store.snapshot():
        yield (LOGS if is_logs else TRACES), field(1, group.resource_field + field(2, group.scope_field + chunk))
