"""Micro-benchmark: the redaction stage alone vs parse-only of the same request bytes, in one run.

    python -m bench.redaction_stage [--traces 100] [--requests 20] [--repeat 5] [--workload wide|bench]
    python -m bench.redaction_stage --against DIR [--pairs 15] [--workload wide|bench]

Workload `wide` (default): recommender traces of 8-12 spans, ~15 attributes per span, a few PII values per trace
(user id/email and client address on the root, a search query with an email now and then, a phone in a
log-like exception message). Workload `bench`: the hop benchmark's recommender traces (bench/workload.py).
Each round parses every request (the parse-only baseline) and then runs the stage the way the hop does: on
the request bytes when the stage takes bytes (the native scanner is built), else on freshly parsed copies.
The best round of each is reported as spans/s, their ratio, and the stage's CPU microseconds per span (the
figure to hold against the hop's ~1.05 us per span of pass-through).

`--against DIR` compares the stage of another checkout (e.g. a `git worktree` at an older revision, its
extensions built in place) with this one in the same run: one worker process per checkout, each importing only
its own `processor` package (`python -P`, PYTHONPATH=checkout), both fed the same request bytes, one round at a
time and in alternating order, so both see the same machine load. Reports each side's best and median
microseconds per span and the ratio of the medians of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from processor.config_node import Node
from processor.otlp_values import kv as _kv
from processor.redaction.rules import DEFAULT_RULES
from processor.stages.base import StageContext

SPAN_NAMES = ("reco.fetch_user_history", "reco.fetch_candidates", "reco.score_candidates",
              "reco.fetch_embeddings", "reco.model_inference", "reco.post_process")
PLACEMENTS = ("home", "product_page", "cart", "email")
MODELS = ("cf-2024.06.1", "cf-2024.07.0", "pop-1.3")



def _common(rng: random.Random, request_id: str, model: str, placement: str) -> list[KeyValue]:
    """Attributes every span of a trace carries (what an instrumented service copies down)."""
    return [
        _kv("reco.request_id", request_id), _kv("reco.placement", placement), _kv("reco.model_version", model),
        _kv("experiment.variant", rng.choice("AB")), _kv("reco.strategy", "cf"),
        _kv("reco.cold_start", rng.random() < 0.08), _kv("reco.fallback", False),
        _kv("reco.item_id", f"item-{rng.randrange(50_000)}"), _kv("reco.score", rng.random()),
        _kv("reco.candidate_count", rng.randrange(100, 2000)), _kv("reco.batch_size", 64),
        _kv("thread.name", "worker-3"), _kv("code.function", "score"),
        _kv("reco.session_id", f"{rng.getrandbits(128):032x}"),
        _kv("reco.started_at", "2026-11-24T09:49:34.123Z"),
    ]


def make_request(traces: int, seed: int) -> bytes:
    """One export request of `traces` recommender traces (8-12 spans each)."""
    rng = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "recommendation-service"), _kv("service.version", "1.8.2"),
                                   _kv("k8s.pod.name", "recommendation-service-7d9f8-00012")])
    ss = rs.scope_spans.add()
    ss.scope.name = "recommender"
    now = 1_760_000_000_000_000_000
    for _ in range(traces):
        tid = rng.getrandbits(128).to_bytes(16, "big")
        user = rng.randrange(1, 200_000)
        common = _common(rng, f"req-{rng.getrandbits(48):012x}", rng.choice(MODELS), rng.choice(PLACEMENTS))
        root = ss.spans.add(trace_id=tid, span_id=rng.getrandbits(64).to_bytes(8, "big"), name="reco.generate",
                            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now, end_time_unix_nano=now + 40_000_000)
        root.attributes.extend(common)
        root.attributes.extend([_kv("user.id", f"u{user}"), _kv("user.email", f"user{user}+recs@example.com"),
                                _kv("client.address", f"10.{rng.randrange(256)}.{rng.randrange(256)}.7")])
        if rng.random() < 0.3:
            query = "gift for jane.doe@example.org" if rng.random() < 0.2 else "running shoes"
            root.attributes.append(_kv("reco.search_query", query))
        for i in range(rng.randint(7, 11)):
            span = ss.spans.add(trace_id=tid, span_id=rng.getrandbits(64).to_bytes(8, "big"),
                                parent_span_id=root.span_id, name=SPAN_NAMES[i % len(SPAN_NAMES)],
                                start_time_unix_nano=now + i, end_time_unix_nano=now + i + 1_000_000)
            span.attributes.extend(common)
            if rng.random() < 0.02:
                span.status.code = span.status.STATUS_CODE_ERROR
                span.status.message = "callback to +44 20 7946 0958 failed"
        now += 50_000_000
    return req.SerializeToString()


def lead_workload_rounds(traces: int, requests: int, repeat: int) -> list[list[bytes]]:
    """The hop benchmark's own workload (`bench/workload.py`, run from the repository root): recommender
    traces with the contract's attributes (~3.4 per span), fresh seed per round."""
    from bench.workload import generate  # the repo's benchmark package, not part of the installed hop

    return [generate(requests=requests, spans_per_request=traces * 10, seed=7 + k).requests
            for k in range(repeat + 1)]


def run(traces: int = 100, requests: int = 20, repeat: int = 5, rules: dict | None = None,
        workload: str = "wide") -> dict[str, float]:
    from processor.stages.redaction import build

    # Fresh requests every round: new request/session ids and users, as in live traffic (warm caches of
    # repeated values are fair, replaying identical requests is not).
    if workload == "bench":
        rounds = lead_workload_rounds(traces, requests, repeat)
    else:
        rounds = [[make_request(traces, 1000 * k + seed) for seed in range(requests)] for k in range(repeat + 1)]
    spans = sum(len(ss.spans) for raw in rounds[0] for rs in ExportTraceServiceRequest.FromString(raw).resource_spans
                for ss in rs.scope_spans)
    ctx = StageContext(registry=CollectorRegistry(), builtin_default=True)
    import logging
    logging.getLogger("recohop").setLevel(logging.ERROR)  # the throwaway-key warning is expected here
    stage = build(Node({"type": "redaction", **(rules or DEFAULT_RULES)}, "<bench>"), ctx)
    on_bytes = stage.takes_trace_bytes
    for raw in rounds[0]:  # warm-up round (caches, first-use costs)
        stage.on_traces(ExportTraceServiceRequest.FromString(raw))
    parse_s = stage_s = float("inf")
    for raws in rounds[1:]:
        began = time.process_time()
        parsed = [ExportTraceServiceRequest.FromString(r) for r in raws]
        mid = time.process_time()
        if on_bytes:
            for raw in raws:
                stage.on_trace_bytes(raw)
        else:
            for request in parsed:
                stage.on_traces(request)
        end = time.process_time()
        parse_s = min(parse_s, mid - began)
        stage_s = min(stage_s, end - mid)
    stage_s = max(stage_s, 1e-9)
    return {"spans": spans, "parse_spans_per_s": spans / parse_s, "stage_spans_per_s": spans / stage_s,
            "parse_plus_stage_spans_per_s": spans / (parse_s + stage_s), "stage_cost_vs_parse": stage_s / parse_s,
            "stage_us_per_span": stage_s / spans * 1e6, "native": float(on_bytes)}

# The worker of `--against`: runs in a checkout's own interpreter path, so only APIs both revisions have.
_WORKER = r"""
import logging, pickle, sys, time
from prometheus_client import CollectorRegistry
from processor.config_node import Node
from processor.redaction.rules import DEFAULT_RULES
from processor.stages.base import StageContext
from processor.stages.redaction import build
logging.getLogger("recohop").setLevel(logging.ERROR)
stage = build(Node({"type": "redaction", **DEFAULT_RULES}, "<bench>"),
              StageContext(registry=CollectorRegistry(), builtin_default=True))
assert stage.takes_trace_bytes, "the native scanner is not built in " + sys.path[0]
source, sink = sys.stdin.buffer, sys.stdout.buffer
while True:
    try:
        raws = pickle.load(source)
    except EOFError:
        break
    began = time.process_time()
    for raw in raws:
        stage.on_trace_bytes(raw)
    pickle.dump(time.process_time() - began, sink)
    sink.flush()
"""


def _worker(checkout: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout), "RECOHOP_REQUIRE_NATIVE": "1"}
    return subprocess.Popen([sys.executable, "-P", "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, cwd=checkout)


def _round(worker: subprocess.Popen, raws: list[bytes]) -> float:
    assert worker.stdin is not None and worker.stdout is not None
    pickle.dump(raws, worker.stdin)
    worker.stdin.flush()
    return pickle.load(worker.stdout)


def against(baseline: Path, traces: int, requests: int, pairs: int, workload: str) -> dict[str, float]:
    """This checkout's stage vs `baseline`'s on the same rounds, alternating (see the module docstring)."""
    here = Path(__file__).resolve().parents[1]
    if workload == "bench":
        rounds = lead_workload_rounds(traces, requests, pairs + 1)
    else:
        rounds = [[make_request(traces, 1000 * k + seed) for seed in range(requests)] for k in range(pairs + 2)]
    spans = sum(len(ss.spans) for raw in rounds[0] for rs in ExportTraceServiceRequest.FromString(raw).resource_spans
                for ss in rs.scope_spans)
    old, new = _worker(baseline.resolve()), _worker(here)
    try:
        _round(old, rounds[0]), _round(new, rounds[0])  # warm-up (caches, first-use costs)
        old_s, new_s = [], []
        for k, raws in enumerate(rounds[1:pairs + 1]):
            order = (old, new) if k % 2 == 0 else (new, old)
            took = {id(w): _round(w, raws) for w in order}
            old_s.append(took[id(old)])
            new_s.append(took[id(new)])
    finally:
        for w in (old, new):
            assert w.stdin is not None
            w.stdin.close()
            w.wait(30)
    ratios = [n / o for n, o in zip(new_s, old_s, strict=True)]
    return {"spans": spans, "pairs": len(ratios), "old_best_us": min(old_s) / spans * 1e6,
            "new_best_us": min(new_s) / spans * 1e6, "old_median_us": statistics.median(old_s) / spans * 1e6,
            "new_median_us": statistics.median(new_s) / spans * 1e6, "ratio_median": statistics.median(ratios),
            "ratio_best": min(new_s) / min(old_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redaction_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=100, help="traces per request")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workload", choices=("wide", "bench"), default="wide",
                        help="wide: ~15 attributes on every span (this module); bench: bench/workload.py's "
                             "recommender traces (run from the repository root)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="compare with the stage of another checkout in the same run (its extensions built)")
    parser.add_argument("--pairs", type=int, default=15, help="alternating rounds per side with --against")
    args = parser.parse_args(argv)
    if args.against is not None:
        ab = against(args.against, args.traces, args.requests, args.pairs, args.workload)
        print(f"spans per round: {ab['spans']}, pairs: {ab['pairs']}")
        print(f"baseline ({args.against}): best {ab['old_best_us']:.3f} us/span, median {ab['old_median_us']:.3f}")
        print(f"this checkout:             best {ab['new_best_us']:.3f} us/span, median {ab['new_median_us']:.3f}")
        print(f"this / baseline:           median of per-pair ratios {ab['ratio_median']:.3f}, "
              f"best / best {ab['ratio_best']:.3f}")
        return 0
    out = run(args.traces, args.requests, args.repeat, workload=args.workload)
    print(f"spans per round:          {out['spans']}")
    print(f"parse only:               {out['parse_spans_per_s']:>12,.0f} spans/s")
    print(f"redaction stage alone:    {out['stage_spans_per_s']:>12,.0f} spans/s")
    print(f"parse + redaction:        {out['parse_plus_stage_spans_per_s']:>12,.0f} spans/s")
    print(f"stage time / parse time:  {out['stage_cost_vs_parse']:.2f}")
    print(f"stage cost per span:      {out['stage_us_per_span']:.3f} us "
          f"({'native scanner on request bytes' if out['native'] else 'Python path on parsed messages'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
