"""In-process cost of the limits stage on the benchmark workload: `python -m bench.limits_stage`.

Prints microseconds of stage CPU per span for the C check (the hot path: every request within limits, passed on
as the same bytes object) and for the pure-Python fallback (RECOHOP_NATIVE=0), so the per-span budget (~0.1 us)
can be checked without running the whole-hop benchmark.
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry

from bench.workload import generate
from processor.limits import check
from processor.limits.settings import Limits
from processor.stages.base import StageContext
from processor.stages.limits import LimitsStage


def per_span_us(requests: list[bytes], spans: int, rounds: int) -> float:
    stage = LimitsStage(Limits(), StageContext(registry=CollectorRegistry()))
    began = time.process_time()
    for _ in range(rounds):
        for raw in requests:
            out = stage.on_trace_bytes(raw)
            assert out[0] is raw
    return (time.process_time() - began) / (spans * rounds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workload = generate(requests=args.requests)
    spans = workload.total_spans
    print(f"workload: {len(workload.requests)} requests, {spans} spans, {workload.total_bytes / spans:.0f} B/span")
    if check.native_available():
        print(f"limits stage, C check:      {per_span_us(workload.requests, spans, args.rounds):.3f} us/span")
    native, check._native = check._native, None
    try:
        print(f"limits stage, Python check: {per_span_us(workload.requests, spans, 1):.3f} us/span")
    finally:
        check._native = native


if __name__ == "__main__":
    main()
