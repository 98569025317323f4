"""What a native walk found ahead of a stage's lock (`Stage.prepare_trace_bytes`), kept for that stage's own call.

Why one helper: three stages walk a request before they take their lock (redaction, span metrics, the trace
store), each on the receiver thread that then calls the stage with the same bytes. The rules are the same for
all: per thread, for that very bytes object only (identity, not equality), used once, and a walk that raised
is forgotten so the stage walks again under its lock and fails in its own handling. A native job (`hold`,
`Stage.prepare_job`) is held the same way before it runs; the stage's call checks that it ran."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

MISSING: Any = object()  # `take`'s answer when nothing was walked ahead for these bytes


class ReadAhead:
    def __init__(self) -> None:
        self._local = threading.local()

    def keep(self, raw: bytes, walk: Callable[[bytes], Any]) -> None:
        """`walk(raw)`, remembered for this thread's next `take` (an exception forgets it)."""
        try:
            self._local.item = (raw, walk(raw))
        except Exception:  # noqa: BLE001 - the stage walks again under its lock and raises there
            self._local.item = None

    def hold(self, raw: bytes, job: Any) -> None:
        """A job (`_nogil.run_jobs`) for this thread's next `take`: the stage's call checks that it has run."""
        self._local.item = (raw, job)

    def take(self, raw: bytes) -> Any:
        """What `keep` found (or the job `hold` held) for this very object on this thread, once; MISSING
        otherwise."""
        item = getattr(self._local, "item", None)
        if item is None:
            return MISSING
        self._local.item = None
        return item[1] if item[0] is raw else MISSING
