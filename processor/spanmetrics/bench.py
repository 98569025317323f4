"""Benchmark: span metrics stage throughput vs parse-only of the same bytes, in the same run.

`python -m processor.spanmetrics.bench [--traces 20000] [--batch 50] [--rounds 3]`

Both sides parse every request from its serialized bytes (what the receiver does); the stage side then runs
`SpanMetricsStage.on_traces` with the default rules (RED + recommender metrics, exemplars on). The ratio is
stage spans/s divided by parse-only spans/s. Because upb parsing is lazy, that ratio mostly shows what any
per-span Python work costs; the hop-level figure (`python -m bench all --hop-config spanmetrics=FILE`) is the
one the >= 0.7x pass-through target is about, and `--passthrough` projects it: a hop forwarding P spans/s
alone and spending 1/S s per span in this stage forwards 1/(1/P + 1/S) spans/s.
"""

from __future__ import annotations

import argparse
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from processor.config_node import Node
from processor.spanmetrics.workload import make_recos, requests_for
from processor.stages.base import StageContext
from processor.stages.spanmetrics import build, default_stage_config


def _stage():  # type: ignore[no-untyped-def]
    node = Node(default_stage_config(), "<bench>")
    node.raw("type")
    stage = build(node, StageContext(registry=CollectorRegistry()))
    node.done()
    return stage


def run(traces: int, batch: int, rounds: int) -> dict[str, float]:
    payloads = [r.SerializeToString() for r in requests_for(make_recos(traces), batch=batch)]
    spans = sum(len(ss.spans) for p in payloads for rs in ExportTraceServiceRequest.FromString(p).resource_spans
                for ss in rs.scope_spans)
    parse = ExportTraceServiceRequest.FromString
    best_parse = best_stage = 0.0
    for _ in range(rounds):
        began = time.perf_counter()
        for p in payloads:
            request = parse(p)
            for rs in request.resource_spans:  # touch the spans like a stage would have to
                for ss in rs.scope_spans:
                    len(ss.spans)
        best_parse = max(best_parse, spans / (time.perf_counter() - began))
        stage = _stage()
        began = time.perf_counter()
        for p in payloads:
            stage.on_traces(parse(p))
        best_stage = max(best_stage, spans / (time.perf_counter() - began))
    return {"spans": spans, "requests": len(payloads), "parse_only_spans_per_s": best_parse,
            "stage_spans_per_s": best_stage, "ratio": best_stage / best_parse}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20_000, help="recommendations (each ~8-9 spans)")
    parser.add_argument("--batch", type=int, default=50, help="recommendations per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passthrough", type=float, default=300_000,
                        help="hop pass-through spans/s to project the hop-level ratio against")
    args = parser.parse_args()
    result = run(args.traces, args.batch, args.rounds)
    stage = result["stage_spans_per_s"]
    projected = 1 / (1 / args.passthrough + 1 / stage) / args.passthrough
    print(f"{result['spans']} spans in {result['requests']} requests; parse-only "
          f"{result['parse_only_spans_per_s']:,.0f} spans/s; spanmetrics stage {stage:,.0f} spans/s "
          f"({1e6 / stage:.2f} us/span); ratio to parse-only {result['ratio']:.2f}; projected hop ratio vs "
          f"{args.passthrough:,.0f} spans/s pass-through: {projected:.2f}")


if __name__ == "__main__":
    main()
