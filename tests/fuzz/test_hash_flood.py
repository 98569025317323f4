"""Hash flooding through a running default hop: trace ids computed to collide under the old unkeyed trace-id
hash cost no more than random ids (issue 20: 40,000 such ids took 19x as long to acknowledge).

Each phase sends every id as a root span of its own trace (the trace store and the intake scanner hash each),
waits until the hop has decided them all (the decision cache takes every id), then sends every id again as a
late span (a decision-cache lookup each). What is timed is what a client waits for: the acknowledgements."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import grpc
import pytest
from flood_ids import colliding_ids, old_tid_hash, random_ids
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from otlp_peers import metric_sum, wait_until

pytestmark = pytest.mark.slow

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
IDS = int(os.environ.get("RECOHOP_FLOOD_IDS", "40000"))
PER_REQUEST = 2000
MAX_FACTOR = 3.0


def requests_for(ids: list[bytes], seed: int) -> list[bytes]:
    rng = random.Random(seed)
    now = time.time_ns()
    out = []
    for at in range(0, len(ids), PER_REQUEST):
        spans = [Span(trace_id=tid, span_id=rng.getrandbits(64).to_bytes(8, "little") or b"\x01" * 8,
                      name="flood", kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now,
                      end_time_unix_nano=now + 1_000_000) for tid in ids[at:at + PER_REQUEST]]
        resource = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
        resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="flood")))
        out.append(ExportTraceServiceRequest(resource_spans=[resource]).SerializeToString())
    return out


def send_all(export: Callable[..., bytes], requests: list[bytes]) -> float:
    """Seconds until every request was acknowledged, one after another (as one client would)."""
    started = time.perf_counter()
    for raw in requests:
        export(raw, timeout=300)
    return time.perf_counter() - started


def phase(export: Callable[..., bytes], metrics_url: str, ids: list[bytes], seed: int) -> float:
    requests = requests_for(ids, seed)
    took = send_all(export, requests)
    wait_until(lambda: metric_sum(metrics_url, "recohop_sampling_buffer_traces ") == 0,
               "every flood trace decided", timeout=300,
               seen=lambda: metric_sum(metrics_url, "recohop_sampling_buffer_traces "))
    return took + send_all(export, requests_for(ids, seed + 1))  # late spans: decision-cache lookups


def test_ids_colliding_under_the_old_hash_cost_what_random_ids_cost(downstream, start_hop) -> None:  # noqa: ANN001
    flood, plain = colliding_ids(IDS), random_ids(IDS)
    assert len(set(flood)) == IDS and len({old_tid_hash(t) for t in flood}) == 1  # one bucket, any table size
    hop = start_hop(None, extra_args=["--forward", downstream.endpoint])
    assert hop.metrics_url is not None
    with grpc.insecure_channel(hop.endpoint, options=[("grpc.max_send_message_length", -1)]) as channel:
        export = channel.unary_unary(EXPORT)
        phase(export, hop.metrics_url, random_ids(2000, seed=9), seed=3)  # warm-up: imports, caches, series
        random_s = phase(export, hop.metrics_url, plain, seed=5)
        flood_s = phase(export, hop.metrics_url, flood, seed=7)
    print(f"{IDS} ids: random {random_s:.2f} s, colliding under the old hash {flood_s:.2f} s "
          f"({flood_s / random_s:.2f}x)")
    assert flood_s <= MAX_FACTOR * random_s + 0.5, (flood_s, random_s)
