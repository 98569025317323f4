"""When a buffered trace is ready for its decision: `root_grace` after its root span arrived (most traces),
`decision_wait` after its first span (traces whose root never comes), at once when it reaches
`max_spans_per_trace`, and early when the buffer is over its memory or trace budget (traces with a root
first, then the oldest)."""

from __future__ import annotations

from collections import deque

from processor.sampling.buffer import TraceBuffer, TraceEntry

# Once over a budget, traces are decided early until the buffer is back under this fraction of it: fewer,
# larger early batches instead of a few traces on every request at the limit.
RELIEVE_TO = 0.9

# Reasons reported in `recohop_sampling_decided_early_total{reason}` (the others are on-time decisions).
EARLY_REASONS = ("max_spans", "max_bytes", "max_traces")


class Readiness:
    def __init__(self, decision_wait: float, root_grace: float, max_traces: int, max_bytes: int) -> None:
        self.decision_wait = decision_wait
        self.root_grace = root_grace
        self.max_traces = max_traces
        self.max_bytes = max_bytes
        # (ready_at, entry): root_grace is constant, so this is ordered by ready_at.
        self._roots: deque[tuple[float, TraceEntry]] = deque()

    def roots_arrived(self, entries: list[TraceEntry], now: float) -> None:
        ready_at = now + self.root_grace
        append = self._roots.append
        for entry in entries:
            append((ready_at, entry))

    def due(self, buffer: TraceBuffer, now: float) -> list[tuple[TraceEntry, str]]:
        """Traces whose time has come (an entry may be listed twice; the caller skips decided ones)."""
        out: list[tuple[TraceEntry, str]] = []
        roots = self._roots
        while roots and roots[0][0] <= now:
            out.append((roots.popleft()[1], "root_grace"))
        deadline = now - self.decision_wait
        for entry in buffer.traces.values():
            if entry.first > deadline:
                break
            out.append((entry, "decision_wait"))
        return out

    def next_to_relieve(self, buffer: TraceBuffer) -> TraceEntry | None:
        """Under memory pressure: the trace whose root arrived first (its data is most likely complete),
        else the oldest trace. Deciding rootless traces early risks missing the root's signals."""
        roots = self._roots
        while roots:
            entry = roots.popleft()[1]
            if buffer.traces.get(entry.trace_id) is entry:
                return entry
        return buffer.oldest()

    def over_budget(self, buffer: TraceBuffer, fraction: float = 1.0) -> str | None:
        """Why the oldest trace must be decided now, or None when the buffer fits `fraction` of its budget."""
        if buffer.nbytes > int(self.max_bytes * fraction):
            return "max_bytes"
        if len(buffer.traces) > int(self.max_traces * fraction):
            return "max_traces"
        return None

    def forget(self) -> None:
        self._roots.clear()
