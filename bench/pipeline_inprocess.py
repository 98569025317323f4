"""The built-in default pipeline in this process, on one thread, without gRPC: what the stages cost per request.

    python -m bench.pipeline_inprocess [--requests 3000] [--profile]

The bench workload's requests (`bench.workload.generate`), replayed with fresh trace ids, go through
`Pipeline.process` at a simulated 460 requests/s, with `flush_due` every 50 ms of simulated time (the hop's
timer). The first third warms the stages up (their groups, memo tables and buffers); the rest is measured: CPU
time per request, or with `--profile` a cProfile of it by internal time (which calls hold the GIL, which jobs run
without it).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

from prometheus_client import CollectorRegistry

from bench.workload import TraceIdRewriter, generate
from processor.config import load_config
from processor.pipeline import Pipeline, build_stages
from processor.stages.base import Emitted, StageContext

RATE = 460.0  # requests per simulated second: about what the hop takes on 2 cores


class SimClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", action="store_true", help="cProfile the measured requests")
    args = parser.parse_args()
    os.environ.setdefault("RECOHOP_PSEUDONYM_KEY", "bench-pipeline-key-0123456789abcdef")
    clock = SimClock()
    cfg = load_config(None)
    ctx = StageContext(registry=CollectorRegistry(), clock=clock, builtin_default=True)
    pipeline = Pipeline(build_stages(cfg.stage_nodes, ctx), ctx, sink=lambda emitted: None)
    replays = [TraceIdRewriter(raw) for raw in generate().requests]
    payloads = [replays[i % len(replays)].replay(i + 1) for i in range(args.requests)]
    next_flush = [clock.now]

    def send(batch: list[bytes]) -> None:
        for raw in batch:
            clock.now += 1.0 / RATE
            pipeline.process(Emitted([raw], [], [], [None]))
            if clock.now >= next_flush[0]:
                pipeline.flush_due(clock.now)
                next_flush[0] = clock.now + 0.05

    warm = args.requests // 3
    send(payloads[:warm])
    measured = payloads[warm:]
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        send(measured)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    else:
        began = time.process_time()
        send(measured)
        spent = time.process_time() - began
        print(f"{len(measured)} requests of ~{sum(map(len, measured)) // max(1, len(measured)):,} bytes: "
              f"{spent / len(measured) * 1e3:.3f} ms CPU per request")
    pipeline.shutdown()


if __name__ == "__main__":
    main()
