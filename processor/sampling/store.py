"""The trace store ("collect"): what the tail-sampling stage asks of the buffer of undecided traces, whichever
implementation holds it — the native store (`native_store.NativeStore`, `_tracestore.c`) that ships, or the
reference store (`reference_store.ReferenceStore`, pure Python), which is both the fallback and the oracle of
the differential tests.

A decision round is: `select_*` a batch of traces (at most one batch is open), `decide` it with the policies,
hand the kept traces' bytes to the outbox (`emit_kept`, then `kept_entry` for the rows it leaves), `finish` it
with its decisions (the traces leave the store, their decisions enter its decision cache), then `release` what
the decided traces held; or `abort` it (a no-op once finished): its traces stay buffered for the next
selection. Intake is transactional: a request that raises changed nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from processor.sampling.buffer import Group, Groups, Late, TraceEntry
from processor.sampling.emit import Outbox
from processor.sampling.policies.policyset import Decision, DecisionSlots

Fault = Callable[[str, BaseException], None]  # (step, exception): a fault the stage counts and survives


class DecisionCache(Protocol):
    def get(self, trace_id: bytes) -> Decision | None: ...

    def put(self, trace_id: bytes, decision: Decision) -> None: ...


@dataclass
class Batch:
    """Traces selected for one decision round. Per row: its log record count and first-seen time; `why` holds
    each row's index into `reasons` when there are several. `held` is the store's own view of the rows."""

    n: int
    nlogs: np.ndarray
    first: np.ndarray
    reasons: tuple[str, ...]
    why: bytes | None
    held: Any
    ids: Callable[[], list[bytes]]  # the rows' trace ids (built only when someone listens)
    released: list[int] = field(default_factory=list)
    # (row, trace id) of the rows whose trace id is in the given collection; None: found through `ids`
    find: Callable[[Collection[bytes]], list[tuple[int, bytes]]] | None = None

    def rows_of(self, wanted: Collection[bytes]) -> list[tuple[int, bytes]]:
        """(row, trace id) of the rows whose trace id is in `wanted`, in row order."""
        if self.find is not None:
            return self.find(wanted)
        return [(row, tid) for row, tid in enumerate(self.ids()) if tid in wanted]


class TraceStore(Protocol):
    groups: Groups  # the (resource, scope) headers the buffered bytes belong to
    cache: DecisionCache  # decisions of traces that left the store (late data follows them)
    slots: DecisionSlots  # the decisions a batch's slots index

    @property
    def traces(self) -> Mapping[bytes, Any]:
        """The buffered trace ids."""

    @property
    def nbytes(self) -> int:
        """Serialized bytes of the buffered spans and logs."""

    def size(self) -> tuple[int, int]:
        """(traces, bytes) buffered: what the budgets count (cheap: asked on every call)."""

    def stats(self) -> tuple[int, int, int]:
        """(traces, bytes, spans) buffered."""

    def prepare(self, raw: bytes) -> None:
        """Optional work on a request ahead of its `intake_spans`, on the receiver thread without the stage's lock
        (concurrently with other calls): nothing that reads or changes what intake changes."""

    def prepare_job(self, raw: bytes, now: float | None = None) -> object | None:
        """`prepare` as a native job held for `intake_spans` of these bytes (`Stage.prepare_job`), or None. With
        `now` the job may also buffer the request (see `merged_plainly`)."""

    def merged_plainly(self, raw: bytes, job: object) -> tuple[int, int, int] | None:
        """After `job` ran: when it buffered `raw` and nothing is left to do under the stage's lock (no trace full,
        no late span to send, no invalid span, no group to forget, the buffer within its budgets), (late spans of
        dropped traces, traces buffered, bytes buffered), and `intake_spans` is not to be called for `raw`; else
        None (call it as usual)."""

    def intake_spans(self, raw: bytes, now: float, late: Late) -> Any:
        """Buffer a serialized traces request; late spans of decided traces go to `late`. Returns what
        `select_full` takes (falsy: no trace reached max_spans_per_trace)."""

    def intake_logs(self, request: Any, now: float, late: Late, passed: list[tuple[Group, bytes, int]]) -> int:
        """Buffer log records with a trace id; records without one go to `passed`. Returns how many were
        buffered."""

    def select_full(self, full: Any) -> Batch: ...

    def select_due(self, now: float) -> Batch: ...

    def select_relieve(self) -> Batch: ...

    def select_all(self) -> Batch: ...

    def decide(self, batch: Batch, now: float, fault: Fault) -> np.ndarray:
        """A decision slot per row (never raises: a failing trace, or batch, is decided `on_error`)."""

    def emit_kept(self, batch: Batch, rows: np.ndarray, slots: np.ndarray, out: Outbox) -> np.ndarray:
        """Hands the kept `rows` the store can serialize itself to `out`; returns the rows left for
        `kept_entry` and `Outbox.add_trace`."""

    def kept_entry(self, batch: Batch, row: int) -> TraceEntry:
        """A kept row's bytes for the outbox."""

    def finish(self, batch: Batch, slots: np.ndarray, kept: np.ndarray) -> None:
        """Record the batch's decisions (raises without recording them)."""

    def release(self, batch: Batch) -> None:
        """Bookkeeping after `finish`: headers no buffered trace refers to any more are forgotten."""

    def abort(self) -> None: ...

    def snapshot(self) -> Iterator[tuple[bool, Group, bytes]]:
        """(is logs, group, chunk) of everything buffered (for the write-ahead log's compaction)."""
