"""Drive a stage as the pipeline's receiver threads do (`processor/pipeline.py`): each thread takes the next
request, calls `prepare_trace_bytes` without the stage's lock, then `on_trace_bytes` under it (`run_as_receivers`;
`on_threads` for other sequences of calls, e.g. a job run and `job_done`). For the tests of the stages' work
ahead of the lock, which must change nothing whatever the threads do."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_as_receivers(stage: Any, requests: list[bytes], handle: Callable[[int, list[bytes]], None],
                     threads: int = 4, meanwhile: Callable[[], None] | None = None) -> None:
    """Every request through `stage` on `threads` threads; `handle(index, output)` is called under the stage's
    lock. `meanwhile` runs on this thread, again and again, until they are done (e.g. the flush timer's calls).
    Re-raises the first exception a thread met."""

    def receive(item: tuple[int, bytes]) -> None:
        i, raw = item
        stage.prepare_trace_bytes(raw)  # no lock: overlaps the other threads and the stage's calls
        with stage.lock:
            handle(i, stage.on_trace_bytes(raw))

    on_threads(list(enumerate(requests)), receive, threads, meanwhile)


def on_threads(items: list[Any], work: Callable[[Any], None], threads: int = 4,
               meanwhile: Callable[[], None] | None = None) -> None:
    """`work(item)` for every item, in order of the list, taken by `threads` threads as each is free. `meanwhile`
    runs on this thread, again and again, until they are done. Re-raises the first exception a thread met."""
    todo = list(reversed(items))
    taken = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                with taken:
                    if not todo:
                        return
                    item = todo.pop()
                work(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            failures.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    while any(t.is_alive() for t in workers):
        if meanwhile is not None:
            meanwhile()
        workers[0].join(timeout=0.001)
    for t in workers:
        t.join()
    if failures:
        raise failures[0]
