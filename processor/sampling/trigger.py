"""When a buffered trace is ready for its decision: `root_grace` after its root span arrived (most traces),
`decision_wait` after its first span (traces whose root never comes), at once when it reaches
`max_spans_per_trace`, and early when the buffer is over its memory or trace budget (traces with a root
first, then the oldest). `Trigger` holds these rules and the reasons a batch is selected for; the stores
select by them (the native store in C, the reference store with `Readiness`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from processor.sampling.buffer import TraceBuffer, TraceEntry

# Once over a budget, traces are decided early until the buffer is back under this fraction of it: fewer,
# larger early batches instead of a few traces on every request at the limit.
RELIEVE_TO = 0.9

# Why a batch was selected (a batch of several reasons says per trace which one).
FULL = ("max_spans",)
DUE = ("root_grace", "decision_wait")
RELIEVE = ("max_bytes", "max_traces")
SHUTDOWN = ("shutdown",)

# Reasons reported in `recohop_sampling_decided_early_total{reason}` (the others are on-time decisions).
EARLY_REASONS = ("max_spans", "max_bytes", "max_traces")


@dataclass(frozen=True)
class Trigger:
    decision_wait: float
    root_grace: float
    max_traces: int
    max_bytes: int

    def over_budget(self, traces: int, nbytes: int, fraction: float = 1.0) -> str | None:
        """Why the buffer must be relieved now (a `RELIEVE` reason), or None when it fits `fraction` of its
        budget."""
        if nbytes > int(self.max_bytes * fraction):
            return "max_bytes"
        if traces > int(self.max_traces * fraction):
            return "max_traces"
        return None

    def relieve_to(self) -> tuple[int, int]:
        """(bytes, traces) a relief batch brings the buffer down to."""
        return int(self.max_bytes * RELIEVE_TO), int(self.max_traces * RELIEVE_TO)


class Readiness:
    """The reference store's readiness lists: traces by root arrival (root_grace is constant, so ordered by
    ready time); decision_wait reads the buffer's first-seen order."""

    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger
        self._roots: deque[tuple[float, TraceEntry]] = deque()

    def roots_arrived(self, entries: list[TraceEntry], now: float) -> None:
        ready_at = now + self.trigger.root_grace
        append = self._roots.append
        for entry in entries:
            append((ready_at, entry))

    def due(self, buffer: TraceBuffer, now: float) -> list[tuple[TraceEntry, str]]:
        """Traces whose time has come (an entry may be listed twice, or be decided already: see `unique`)."""
        out: list[tuple[TraceEntry, str]] = []
        roots = self._roots
        while roots and roots[0][0] <= now:
            out.append((roots.popleft()[1], "root_grace"))
        deadline = now - self.trigger.decision_wait
        for entry in buffer.traces.values():
            if entry.first > deadline:
                break
            out.append((entry, "decision_wait"))
        return out

    def relieve(self, buffer: TraceBuffer) -> list[tuple[TraceEntry, str]]:
        """Over budget: the traces to decide now, until the buffer would be under `RELIEVE_TO` of its budget.
        Traces whose root arrived first come first (their data is most likely complete), then the oldest;
        deciding rootless traces early risks missing the root's signals."""
        out: list[tuple[TraceEntry, str]] = []
        traces, nbytes = len(buffer.traces), buffer.nbytes
        reason = self.trigger.over_budget(traces, nbytes)
        chosen: set[bytes] = set()
        oldest = iter(buffer.traces.values())
        while reason is not None:
            entry = self._next_to_relieve(buffer, chosen, oldest)
            if entry is None:
                break
            chosen.add(entry.trace_id)
            out.append((entry, reason))
            traces, nbytes = traces - 1, nbytes - entry.nbytes
            reason = self.trigger.over_budget(traces, nbytes, RELIEVE_TO)
        return out

    def _next_to_relieve(self, buffer: TraceBuffer, chosen: set[bytes],
                         oldest: Iterator[TraceEntry]) -> TraceEntry | None:
        roots = self._roots
        while roots:
            entry = roots.popleft()[1]
            if buffer.traces.get(entry.trace_id) is entry and entry.trace_id not in chosen:
                return entry
        for entry in oldest:
            if entry.trace_id not in chosen:
                return entry
        return None


def unique(due: list[tuple[TraceEntry, str]], buffer: TraceBuffer) -> list[tuple[TraceEntry, str]]:
    """Each still-buffered trace once, at its first listing."""
    traces = buffer.traces
    seen: set[bytes] = set()
    out = []
    for entry, reason in due:
        trace_id = entry.trace_id
        if trace_id not in seen and traces.get(trace_id) is entry:
            seen.add(trace_id)
            out.append((entry, reason))
    return out
