"""What a policy's batch evaluation (`Policy.batch`) reads: a batch of due traces as numpy columns (the native
store's packed facts, `native_store.Facts`) and the store's bit layout (`native_store.Layout`), plus the
fallback that asks the policy per trace in Python. Each policy kind answers for a whole batch with array
operations where its facts are columns, and per trace where it needs values or state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

UNKNOWN_CLASS = 1 << 63  # a value the classifier could not answer for: ask the policies in Python


class BatchFacts(Protocol):
    """A batch of due traces: `recs` is the store's record array (columns nspans, start, end, hits, present,
    classes, max_severity, ...), `durs` the longest duration per named span (-1: none)."""

    recs: np.ndarray
    durs: np.ndarray
    error: np.ndarray
    exception: np.ndarray
    has_res: np.ndarray
    failed: set[int]  # rows a policy failed on: decided on_error

    def low56(self) -> np.ndarray: ...

    def view(self, row: int) -> Any: ...  # a `base.TraceView` of one row


class PerTrace(Protocol):
    """What the per-trace fallback asks: a policy's own `matches`."""

    def matches(self, trace: Any, now: float) -> bool: ...


class BatchLayout(Protocol):
    """Which bit of a trace's `hits` / `present` / `classes` words stands for what, and the named spans."""

    names: tuple[str, ...]
    hit_bit: dict[tuple[str, bytes], int]
    present_bit: dict[str, int]
    class_bit: dict[int, int]
    classifies: bool


Batch = Callable[[BatchFacts, np.ndarray], np.ndarray]  # (facts, row indexes) -> bool per row


def in_python(policy: PerTrace, now: float) -> Batch:
    """A policy that needs values or state: asked per trace, in batch order (rate_limit's tokens then go
    exactly as with sequential decisions). A failing trace is marked and decided `on_error`."""
    def run(facts: BatchFacts, rows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows), dtype=bool)
        for i, row in enumerate(rows.tolist()):
            if row in facts.failed:
                out[i] = True  # decided on_error by the caller
                continue
            try:
                out[i] = policy.matches(facts.view(row), now)
            except Exception:  # noqa: BLE001 - same rule as the per-trace path: keep the trace
                facts.failed.add(row)
                out[i] = True
        return out
    return run


def some_in_python(policy: PerTrace, now: float, ask: Callable[[BatchFacts, np.ndarray], np.ndarray],
                   fast: Batch | None) -> Batch:
    """Rows where `ask` is true go to the policy in Python; the others take `fast` (or False)."""
    slow = in_python(policy, now)

    def run(facts: BatchFacts, rows: np.ndarray) -> np.ndarray:
        out = fast(facts, rows) if fast is not None else np.zeros(len(rows), dtype=bool)
        need = ask(facts, rows)
        if need.any():
            out[need] = slow(facts, rows[need])
        return out
    return run
