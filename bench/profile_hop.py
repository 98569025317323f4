"""Runs `recohop serve` with cProfile (CPU time) in every thread (receiver workers, gRPC poller, exporter consumers),
then writes the merged profile. Used by the benchmark when BENCH_PROFILE_HOP=DIR is set (no py-spy here).

    python -m bench.profile_hop OUT.prof serve --listen ... --forward ...
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import threading
import time

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_thread_profile(*_args: object) -> None:
    """First profile event in a new thread: swap this hook for a real per-thread cProfile."""
    sys.setprofile(None)
    # Per-thread CPU time, not wall time: idle waits and GIL waits of the many pool threads would
    # otherwise swamp the profile.
    prof = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(prof)
    prof.enable()


def main(argv: list[str]) -> int:
    out, serve_args = argv[0], argv[1:]
    from processor.cli import main as recohop_main

    threading.setprofile(_start_thread_profile)
    code = recohop_main(serve_args)
    with _lock:
        profiles = list(_profiles)
    stats: pstats.Stats | None = None
    for prof in profiles:
        try:
            stats = pstats.Stats(prof) if stats is None else stats.add(prof)
        except TypeError:  # a thread that never recorded anything
            continue
    if stats is not None:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        stats.dump_stats(out)
        text = io.StringIO()
        pstats.Stats(out, stream=text).sort_stats("tottime").print_stats(35)
        pstats.Stats(out, stream=text).sort_stats("cumulative").print_stats(35)
        with open(out[: -len(".prof")] + ".txt" if out.endswith(".prof") else out + ".txt", "w") as f:
            f.write(text.getvalue())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # other threads may still hold live profilers: skip interpreter teardown


if __name__ == "__main__":
    main(sys.argv[1:])
