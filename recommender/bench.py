"""Throughput of the fully instrumented service: simulate as fast as possible on one pinned core while a
sink process (on another core when there is one) receives every span over OTLP gRPC."""

from __future__ import annotations

import os
import subprocess
import sys

from recommender.faults import Faults


def run_bench(requests: int = 4000, seed: int = 0, faults: Faults | None = None) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    sink = subprocess.Popen([sys.executable, "-m", "recommender", "sink", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = sink.stdout.readline() if sink.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"sink did not start: {line!r}")
        endpoint = line.split()[-1]
        if len(cores) > 1:
            os.sched_setaffinity(sink.pid, set(cores[1:]))
        os.sched_setaffinity(0, {cores[0]})  # the recommender and its exporter thread share one core
        from recommender.simulate import run, world_and_arms

        world_and_arms(seed)  # train before the clock starts
        rps = 200.0
        truth = run(endpoint, rps, requests / rps, seed, faults or Faults(error=0.01, slow=0.02, timeout=0.01))
    finally:
        os.sched_setaffinity(0, set(cores))
        sink.terminate()
        out, _ = sink.communicate(timeout=30)
    received = int(out.split("received ")[1].split()[0]) if "received " in out else -1
    return {"requests": truth.requests, "spans_emitted": truth.spans, "spans_received": received,
            "wall_seconds": truth.run["wall_seconds"], "requests_per_second": truth.run["achieved_rps"],
            "core": cores[0]}
