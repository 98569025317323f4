"""Benchmark: span metrics stage throughput vs parse-only of the same bytes, in the same run.

`python -m bench.spanmetrics_stage [--traces 20000] [--batch 50] [--rounds 3] [--python]`

Both sides parse every request from its serialized bytes (what the receiver does to validate it); the stage
side then hands the stage the same bytes, as the pipeline does (`SpanMetricsStage.on_trace_bytes`, default
rules: RED + recommender metrics, exemplars on; the native intake when built, `--python` forces the
pure-Python path). The ratio is stage spans/s divided by parse-only spans/s; `stage us/span` is the CPU time
inside the stage alone divided by spans (what the stage adds to the hop's ~1.05 us/span pass-through). Because upb parsing is lazy, that ratio mostly shows what any
per-span Python work costs; the hop-level figure (`python -m bench all --hop-config spanmetrics=FILE`) is the
one the >= 0.7x pass-through target is about, and `--passthrough-us` projects it: a hop spending P us of CPU
per span passing spans through and S us per span in this stage forwards P / (P + S) of its pass-through rate.
"""

from __future__ import annotations

import argparse
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from bench.spanmetrics_workload import make_recos, requests_for
from processor.config_node import Node
from processor.stages.base import StageContext
from processor.stages.spanmetrics import build, default_stage_config


def _stage():  # type: ignore[no-untyped-def]
    node = Node(default_stage_config(), "<bench>")
    node.raw("type")
    stage = build(node, StageContext(registry=CollectorRegistry()))
    node.done()
    return stage


def run(traces: int, batch: int, rounds: int, python: bool = False) -> dict[str, float]:
    payloads = [r.SerializeToString() for r in requests_for(make_recos(traces), batch=batch)]
    spans = sum(len(ss.spans) for p in payloads for rs in ExportTraceServiceRequest.FromString(p).resource_spans
                for ss in rs.scope_spans)
    parse = ExportTraceServiceRequest.FromString
    best_parse = best_stage = 0.0
    best_cpu = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for p in payloads:
            request = parse(p)
            for rs in request.resource_spans:  # touch the spans like a stage would have to
                for ss in rs.scope_spans:
                    len(ss.spans)
        best_parse = max(best_parse, spans / (time.perf_counter() - began))
        stage = _stage()
        if python:
            stage.deriver.native = None
        cpu = 0.0
        began = time.perf_counter()
        for p in payloads:
            parse(p)
            t0 = time.process_time()
            stage.on_trace_bytes(p)
            cpu += time.process_time() - t0
        best_stage = max(best_stage, spans / (time.perf_counter() - began))
        best_cpu = min(best_cpu, cpu)
    return {"spans": spans, "requests": len(payloads), "parse_only_spans_per_s": best_parse,
            "stage_spans_per_s": best_stage, "ratio": best_stage / best_parse,
            "stage_us_per_span": best_cpu / spans * 1e6, "native": not python and stage.deriver.native is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20_000, help="recommendations (each ~8-9 spans)")
    parser.add_argument("--batch", type=int, default=50, help="recommendations per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", action="store_true", help="force the pure-Python intake (no native scanner)")
    parser.add_argument("--passthrough-us", type=float, default=1.05,
                        help="hop CPU per span when passing spans through (us), to project the hop-level ratio")
    args = parser.parse_args()
    result = run(args.traces, args.batch, args.rounds, args.python)
    stage = result["stage_spans_per_s"]
    added = result["stage_us_per_span"]
    projected = args.passthrough_us / (args.passthrough_us + added)
    print(f"{result['spans']} spans in {result['requests']} requests; intake "
          f"{'native' if result['native'] else 'python'}; parse-only {result['parse_only_spans_per_s']:,.0f} "
          f"spans/s; parse + spanmetrics stage {stage:,.0f} spans/s; ratio to parse-only {result['ratio']:.2f}; "
          f"stage CPU {added:.3f} us/span; projected hop ratio vs pass-through at {args.passthrough_us} us/span: "
          f"{projected:.2f}")


if __name__ == "__main__":
    main()
