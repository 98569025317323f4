"""Decisions depend only on the trace: the same trace ids get the same decisions in separate processes, and
a 3-way split by trace id over 3 stage instances keeps exactly what one instance keeps."""

from __future__ import annotations

import os
import subprocess
import sys

from sampling_helpers import REPO, Harness

from bench.sampling_workload import all_spans, make_traces, to_requests

SCRIPT = """
import sys
sys.path.insert(0, {helpers!r})
from sampling_helpers import Harness
from bench.sampling_workload import all_spans, make_traces, to_requests
h = Harness()
for request in to_requests(all_spans(make_traces(seed=99, count=3000)), per_request=300):
    h.send(request)
h.advance(2.1)
for tid, kept, policy in sorted(h.decisions):
    print(tid.hex(), int(kept), policy)
"""


def run_in_process(seed_env: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed_env}
    code = SCRIPT.format(helpers=str(REPO / "tests" / "sampling"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            check=True)
    return result.stdout.splitlines()


def test_same_decisions_in_two_processes() -> None:
    first, second = run_in_process("1"), run_in_process("2")
    assert len(first) == 3000
    assert first == second
    assert sum(line.split()[1] == "1" for line in first) > 30  # something was kept (special + 1 %)


def kept_set(harnesses: list[Harness]) -> dict[bytes, tuple[bool, str]]:
    return {tid: (kept, policy) for h in harnesses for tid, kept, policy in h.decisions}


def test_three_way_split_equals_single_instance() -> None:
    traces = make_traces(seed=42, count=6000)
    spans = all_spans(traces)
    single = Harness()
    for request in to_requests(spans, per_request=256):
        single.send(request)
    single.advance(2.1)
    shards = [Harness() for _ in range(3)]
    # Like the otelcol loadbalancing exporter with routing_key traceID: each trace goes to one instance.
    for i, shard in enumerate(shards):
        mine = [s for s in spans if int.from_bytes(s.trace_id, "big") % 3 == i]
        for request in to_requests(mine, per_request=256):
            shard.send(request)
        shard.advance(2.1)
    assert kept_set(shards) == kept_set([single])
    single_spans = sorted(s.SerializeToString() for s in single.out_spans())
    shard_spans = sorted(s.SerializeToString() for h in shards for s in h.out_spans())
    assert shard_spans == single_spans
    assert len({tid for tid, (kept, _) in kept_set([single]).items() if kept}) > 200
