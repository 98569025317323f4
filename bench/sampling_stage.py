"""Tail-sampling benchmark on a recommender-shaped workload (8-12 spans per trace, ~4 % special traces).

    python -m bench.sampling_stage [--traces 20000] [--policies FILE]

Reports, in the same run: parse-only spans/s of the same request bytes, parse + re-serialize spans/s (what a
mutating pass-through hop does per span), the full stage's spans/s (parse + stage + timer flushes + encoding of
what it emits) and its ratio to both; memory per buffered span vs its wire size; and p50/p99 decision latency
(first span -> decision) on a simulated clock driven at `--rate` spans/s with flushes every `flush_interval`.
Times are this process's CPU time (best of `--runs`), so other load on the machine disturbs them less.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from bench.sampling_workload import all_spans, make_traces, to_requests
from processor.commands.replay import read_capture
from processor.config_node import Node
from processor.sampling.policyfile import DEFAULT_POLICY_FILE
from processor.stages.base import StageContext, as_trace_bytes
from processor.stages.tail_sampling import TailSampling, build


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_stage(policies: Path, clock: SimClock, **extra: object) -> TailSampling:
    ctx = StageContext(registry=CollectorRegistry(), clock=clock)
    stage = build(Node({"policies": str(policies), **extra}, "<bench>"), ctx)
    assert isinstance(stage, TailSampling)
    return stage


def best_of(runs: int, fn) -> float:  # noqa: ANN001 - a no-argument callable
    return min(fn() for _ in range(runs))


def run(traces: int, policies: Path, rate: float, per_request: int, runs: int,
        capture: Path | None = None) -> dict[str, float]:
    if capture is not None:  # e.g. the hop benchmark's bench-out/work/workload.bin
        requests = [r for r in read_capture(capture) if isinstance(r, ExportTraceServiceRequest)]
        payloads = [r.SerializeToString() for r in requests]
        spans = [s for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
        per_request = max(1, len(spans) // max(1, len(payloads)))
    else:
        spans = all_spans(make_traces(seed=7, count=traces))
        payloads = [r.SerializeToString() for r in to_requests(spans, per_request)]
    nspans = len(spans)
    parse = ExportTraceServiceRequest.FromString

    def parse_only() -> float:
        began = time.process_time()
        for payload in payloads:
            parse(payload)
        return time.process_time() - began

    def parse_serialize() -> float:
        began = time.process_time()
        for payload in payloads:
            parse(payload).SerializeToString()
        return time.process_time() - began

    latencies: list[float] = []

    def stage_run() -> float:
        clock = SimClock()
        stage = make_stage(policies, clock)
        first_seen: dict[bytes, float] = {}
        latencies.clear()
        stage.bus.subscribe(lambda tid, kept, policy: latencies.append(clock.now - first_seen.pop(tid)))
        next_flush = stage.flush_interval or 0.1
        gc.collect()
        began = time.process_time()
        for payload in payloads:
            request = parse(payload)
            for tid in {s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}:
                first_seen.setdefault(tid, clock.now)  # bookkeeping for latency only; timed out below
            stage.on_trace_bytes(payload)  # the hop's path: serialized requests in and out
            clock.now += per_request / rate
            if clock.now >= next_flush:
                emitted = stage.flush(clock.now)
                for out in emitted.traces if emitted else []:
                    as_trace_bytes(out)  # what the exporter sends (the stage hands serialized requests)
                next_flush = clock.now + (stage.flush_interval or 0.1)
        while first_seen:  # let the last traces reach root_grace / decision_wait, as a running hop would
            clock.now += stage.flush_interval or 0.1
            stage.flush(clock.now)
        return time.process_time() - began

    def bookkeeping() -> float:  # the latency bookkeeping above, timed alone so it can be subtracted
        seen: dict[bytes, float] = {}
        began = time.process_time()
        for payload in payloads:
            request = parse(payload)
            for tid in {s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}:
                seen.setdefault(tid, 0.0)
        return time.process_time() - began

    t_parse = best_of(runs, parse_only)
    t_reser = best_of(runs, parse_serialize)
    t_stage = best_of(runs, stage_run) - (best_of(runs, bookkeeping) - t_parse)
    ordered = sorted(latencies)

    # Memory per buffered span: buffer everything on a frozen clock, measure what stays allocated.
    clock = SimClock()
    stage = make_stage(policies, clock, max_bytes="4GiB", max_traces=10_000_000)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for payload in payloads:
        stage.on_trace_bytes(payload)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    wire = sum(len(s.SerializeToString()) for s in spans)
    return {
        "spans": nspans,
        "parse_only_spans_per_s": nspans / t_parse,
        "parse_serialize_spans_per_s": nspans / t_reser,
        "stage_spans_per_s": nspans / t_stage,
        "ratio_vs_parse_only": t_parse / t_stage,
        "ratio_vs_parse_serialize": t_reser / t_stage,
        "bytes_per_buffered_span": held / stage.buffer_spans(),
        "wire_bytes_per_span": wire / nspans,
        "memory_vs_wire": held / wire,
        "decision_latency_p50_s": statistics.median(ordered),
        "decision_latency_p99_s": ordered[int(len(ordered) * 0.99)],
        "traces_decided": len(ordered),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICY_FILE)
    parser.add_argument("--rate", type=float, default=200_000.0, help="simulated arrival rate, spans/s")
    parser.add_argument("--per-request", type=int, default=512, help="spans per export request")
    parser.add_argument("--runs", type=int, default=3, help="best of N timed runs")
    parser.add_argument("--capture", type=Path, help="use this capture (JSON lines or length-delimited) instead")
    args = parser.parse_args(argv)
    result = run(args.traces, args.policies, args.rate, args.per_request, args.runs, args.capture)
    for key, value in result.items():
        print(f"{key:30s} {value:,.3f}" if isinstance(value, float) else f"{key:30s} {value:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
