"""The hop's one clock: monotonic seconds and an interruptible wait.

Timing logic (export retries and backoff, the shutdown deadline, stage flush and decision timers) reads time
and waits only through a `Clock`, so tests drive it with a fake one instead of sleeping. `SYSTEM_CLOCK` is
the real one; `SYSTEM_CLOCK.now` is also the default `StageContext.clock`.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (only differences mean anything)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to `seconds` or until `event` is set; True when the event was set."""
        ...


class SystemClock:
    """`time.monotonic` and `Event.wait`."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()
