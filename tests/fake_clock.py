"""A driven `processor.clock.Clock` for timing tests: virtual seconds, no wall-clock sleeping."""

from __future__ import annotations

import threading

# Real seconds a held wait may block before the test counts it as a hang.
HOLD_LIMIT = 10.0


class FakeClock:
    """`wait` returns at once, having moved virtual time on by the seconds asked for, unless its event is
    already set (then time stands still, as it would for an interrupted wait). Every wait is recorded.

    `hold_next_wait()` makes the next wait block for real until its event is set: the way to put something
    (e.g. `Exporter.stop`) in the middle of a backoff; `held` is set once that wait has begun."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.waits: list[float] = []
        self.held = threading.Event()
        self._hold = False
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.time

    def __call__(self) -> float:  # usable as a StageContext clock too
        return self.time

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.time += seconds

    def hold_next_wait(self) -> None:
        self._hold = True

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self._lock:
            self.waits.append(seconds)
            hold, self._hold = self._hold, False
        if hold and not event.is_set():
            self.held.set()
            if not event.wait(HOLD_LIMIT):
                raise AssertionError(f"a held {seconds:.3f} s wait was not interrupted within {HOLD_LIMIT} s")
        if event.is_set():
            return True
        self.advance(max(0.0, seconds))
        return False
