"""The reference trace store: `store.TraceStore` in pure Python over `buffer.TraceBuffer`, readiness lists
(`trigger.Readiness`) and a two-generation decision cache. It runs when the native store is not built or cannot
take the policy set, and it is the oracle the native store is compared against: simple, per trace, with the
same selections, the same decision rule (`PolicySet.decide`) and the same results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processor.sampling.buffer import Group, Late, TraceBuffer, TraceEntry
from processor.sampling.cache import DecisionCache
from processor.sampling.emit import Outbox
from processor.sampling.policies.policyset import Decision, DecisionSlots, PolicySet
from processor.sampling.store import Batch, Fault
from processor.sampling.trigger import DUE, FULL, RELIEVE, SHUTDOWN, Readiness, Trigger, unique


class ReferenceStore:
    def __init__(self, policies: PolicySet, max_spans: int, cache_size: int, trigger: Trigger) -> None:
        self.policies = policies
        self.buffer = TraceBuffer(policies.needs, max_spans)
        self.groups = self.buffer.groups
        self.cache = DecisionCache[Decision](cache_size)
        self.slots = DecisionSlots(policies)
        self.ready = Readiness(trigger)

    # -- what is buffered ------------------------------------------------------------------------------------

    @property
    def traces(self) -> dict[bytes, TraceEntry]:
        return self.buffer.traces

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def size(self) -> tuple[int, int]:
        return len(self.buffer.traces), self.buffer.nbytes

    def stats(self) -> tuple[int, int, int]:
        traces = self.buffer.traces
        return len(traces), self.buffer.nbytes, sum(e.nspans for e in traces.values())

    def snapshot(self) -> Iterator[tuple[bool, Group, bytes]]:
        by_id = self.groups.by_id
        for entry in self.buffer.traces.values():
            for is_logs, chunks in ((False, entry.chunks), (True, entry.log_chunks or {})):
                for gid, chunk in chunks.items():
                    yield is_logs, by_id[gid], bytes(chunk)

    # -- intake ---------------------------------------------------------------------------------------------

    def prepare(self, raw: bytes) -> None:
        """Nothing ahead: this store reads a request in one pass, under the stage's lock."""

    def prepare_job(self, raw: bytes, now: float | None = None) -> None:
        return None

    def merged_plainly(self, raw: bytes, job: object) -> None:
        return None

    def intake_spans(self, raw: bytes, now: float, late: Late) -> list[TraceEntry]:
        roots: list[TraceEntry] = []
        full: list[TraceEntry] = []
        self.buffer.add_spans(ExportTraceServiceRequest.FromString(raw), now, self.cache, roots, full, late)
        if roots:
            self.ready.roots_arrived(roots, now)
        return full

    def intake_logs(self, request: Any, now: float, late: Late, passed: list[tuple[Group, bytes, int]]) -> int:
        return self.buffer.add_logs(request, now, self.cache, late, passed)

    # -- decision rounds ------------------------------------------------------------------------------------

    def select_full(self, full: list[TraceEntry]) -> Batch:
        return self._batch(unique([(entry, FULL[0]) for entry in full], self.buffer), FULL)

    def select_due(self, now: float) -> Batch:
        return self._batch(unique(self.ready.due(self.buffer, now), self.buffer), DUE)

    def select_relieve(self) -> Batch:
        return self._batch(self.ready.relieve(self.buffer), RELIEVE)

    def select_all(self) -> Batch:
        return self._batch([(entry, SHUTDOWN[0]) for entry in self.buffer.traces.values()], SHUTDOWN)

    @staticmethod
    def _batch(rows: list[tuple[TraceEntry, str]], reasons: tuple[str, ...]) -> Batch:
        entries = [entry for entry, _ in rows]
        n = len(entries)
        why = bytes(reasons.index(reason) for _, reason in rows) if len(reasons) > 1 else None
        return Batch(n, np.fromiter((e.nlogs for e in entries), dtype=np.int64, count=n),
                     np.fromiter((e.first for e in entries), dtype=np.float64, count=n), reasons, why, entries,
                     lambda: [e.trace_id for e in entries])

    def decide(self, batch: Batch, now: float, fault: Fault) -> np.ndarray:
        """Each trace on its own: its remaining facts read from its spans, then `PolicySet.decide`; a trace
        that fails is decided `on_error` (and counted), the others go on."""
        complete = self.buffer.complete
        decide = self.policies.decide
        slot = self.slots.slot
        slots = np.empty(batch.n, dtype=np.int32)
        for row, entry in enumerate(batch.held):
            try:
                complete(entry)
                decision = decide(entry, now)
            except Exception as exc:  # never wedge the buffer on one trace
                fault("decide", exc)
                decision = self.policies.on_error
            slots[row] = slot(decision)
        return slots

    def emit_kept(self, batch: Batch, rows: np.ndarray, slots: np.ndarray, out: Outbox) -> np.ndarray:
        return rows  # every kept trace goes through the Outbox's own path

    def kept_entry(self, batch: Batch, row: int) -> TraceEntry:
        return batch.held[row]

    def finish(self, batch: Batch, slots: np.ndarray, kept: np.ndarray) -> None:
        decisions = self.slots.decisions
        cache_put = self.cache.put
        remove = self.buffer.remove
        for entry, slot in zip(batch.held, slots.tolist(), strict=True):
            cache_put(entry.trace_id, decisions[slot])
            remove(entry)

    def release(self, batch: Batch) -> None:
        """Nothing left: `finish` released each trace's groups as it removed the trace."""

    def abort(self) -> None:
        """Nothing to undo: selecting changes no trace (the readiness lists list a kept-back trace again)."""
