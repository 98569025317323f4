"""The overload soak (issues 11 and 16): a hop running the shipped default pipeline on its native path, with
explicit memory budgets, is offered far more than it can take for a minute by the benchmark's multi-process
replay load generator.

Pass or fail rests on what is counted, not on throughput measured at different moments on shared cores:
- push back all along: the receiver answers RESOURCE_EXHAUSTED + RetryInfo, counts every such refusal, and
  refuses in every 10 s of the minute (the overload was sustained, not a burst);
- memory stays inside a bound derived from the budgets (the kernel's RSS high-water mark; RSS is also
  sampled every second for the report);
- a well-behaved client's error traces, sent during the overload, are all acknowledged and arrive whole;
- once the load stops the hop serves ordinary traffic again by itself.
The overload factor is reported, as offered / acknowledged spans of the same clients in the same window.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from otlp_peers import REPO_ROOT, HopProcess, metric_sum, start_hop_process, wait_until
from overload_peers import Sample, Sampler, SpanId, WatchingSink, WellBehavedClient, error_trace_request

from bench.loadgen import ClientPlan, ClientResult, Clients
from bench.procs import HOP_PATH_ENV, rss_bytes
from bench.workload import TraceIdRewriter, generate, write_workload
from processor.config import DEFAULTS_DIR
from processor.signals import METHOD_PATHS

pytestmark = [pytest.mark.slow, pytest.mark.serial]

# The explicit budgets under test.
QUEUE_MAX_BYTES = 2 << 20  # exporter queue
SAMPLING_MAX_BYTES = 8 << 20  # tail-sampling buffer (serialized span bytes)
RECEIVER_WORKERS = 16  # the receiver's default thread pool; gRPC admits workers * 8 calls at once
MAX_RECV_MSG_SIZE = 4 << 20
DECISION_CACHE_SIZE = 200_000  # the tail-sampling default, made explicit: it fills within the minute

OVERLOAD_SECONDS = 60.0
SLICE_SECONDS = 10.0  # the hop must have refused requests in every slice of this length
OVERLOAD_CLIENTS = 5  # processes, each with its own connections
OVERLOAD_STREAMS = 64  # calls in flight per process: 320 in all, against an admission limit of 8
ERROR_REQUESTS = 8  # spread over the overload window
ERROR_TRACES_PER_REQUEST = 6
RECOVERY_LIMIT_SECONDS = 10.0
PSEUDONYM_KEY = "overload-soak-" + "0123456789abcdef" * 4


def overload_config(downstream: str) -> str:
    """The shipped default pipeline (same stages, rule files and settings) with explicit budgets."""
    defaults = DEFAULTS_DIR
    if os.environ.get(HOP_PATH_ENV):  # the default of the processor/ copy the hop runs
        defaults = Path(os.environ[HOP_PATH_ENV]) / "processor" / "defaults"
    default = yaml.safe_load((defaults / "hop.yaml").read_text())
    pipeline = []
    for stage in default["pipeline"]:
        stage = dict(stage)
        for key in ("rules", "policies"):
            if key in stage and not stage[key].startswith("builtin:"):  # builtin: resolves wherever recohop runs
                stage[key] = str(defaults / stage[key])
        if stage["type"] == "tail_sampling":
            stage["max_bytes"] = SAMPLING_MAX_BYTES
            stage["decision_cache_size"] = DECISION_CACHE_SIZE
        pipeline.append(stage)
    return yaml.safe_dump({
        "receiver": {"max_recv_msg_size": MAX_RECV_MSG_SIZE, "workers": RECEIVER_WORKERS},
        "exporter": {"endpoint": downstream, "queue": {"max_bytes": QUEUE_MAX_BYTES}},
        "pipeline": pipeline,
    }, sort_keys=False)


def rss_bound(idle_rss: int, largest_request: int) -> int:
    """What the hop may legitimately hold at once, on top of the idle process:
    - the exporter queue and the tail-sampling buffer, each counted twice: their budgets count serialized
      bytes, and the objects and chunks holding them cost about as much again;
    - the decision cache: 128 B per entry (the Python dict ~101 B measured with tracemalloc; the native
      store's two generations of 20-byte slots at most half full: 80 B);
    - each receiver worker's request three times (received bytes, parsed message, rewritten output);
    - every stream the clients hold open with its whole request buffered by gRPC's transport, twice over.
      Measured: Python-traced memory stays near 20 MiB while RSS grows by ~0.8-0.9 MiB per open stream
      with 0.53 MiB requests (80, 160 and 320 streams). HTTP/2 flow-control windows grow far past their
      initial 64 KiB (BDP probing), so a call waiting for admission or refusal arrives whole, in read
      slices that take up to about twice its bytes;
    - 64 MiB of allocator slack: glibc keeps freed chunks in per-thread arenas (16 receiver threads plus
      gRPC's own), which RSS counts.
    Unbounded queueing of the offer (~0.5 GB/s of requests offered) would pass this within seconds."""
    return (idle_rss + 2 * (QUEUE_MAX_BYTES + SAMPLING_MAX_BYTES) + DECISION_CACHE_SIZE * 128
            + RECEIVER_WORKERS * 3 * largest_request + OVERLOAD_CLIENTS * OVERLOAD_STREAMS * 2 * largest_request
            + (64 << 20))


def peak_rss(pid: int) -> int:
    """The kernel's high-water mark of the process' RSS (VmHWM): every peak, not only those a sampler saw."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def health_status(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status


def wait_until_drained(hop: HopProcess, sink: WatchingSink, timeout: float) -> None:
    """Until no trace waits for a decision, the export queue is empty and every exported span arrived."""
    url = hop.metrics_url
    assert url is not None

    def state() -> dict[str, float]:
        return {"buffered_traces": metric_sum(url, "recohop_sampling_buffer_traces "),
                "queue_bytes": metric_sum(url, "recohop_queue_bytes "),
                "exported_spans": metric_sum(url, 'recohop_exported_items_total{signal="spans"}'),
                "arrived_spans": sink.spans}

    def drained() -> bool:
        now = state()
        return now["buffered_traces"] == 0 and now["queue_bytes"] == 0 and now["exported_spans"] == now["arrived_spans"]

    wait_until(drained, "the hop to decide and deliver everything it accepted", timeout, seen=state)


def seconds_until_accepted(endpoint: str, request: bytes, limit: float) -> float | None:
    """Seconds until the hop reports SERVING and accepts `request` (None: not within `limit`)."""
    started = time.monotonic()
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(METHOD_PATHS["traces"])
        while time.monotonic() - started < limit:
            try:
                if health_status(endpoint) == health_pb2.HealthCheckResponse.SERVING:
                    call(request, timeout=5.0)
                    return time.monotonic() - started
            except grpc.RpcError:
                time.sleep(0.1)  # poll again: the condition is the hop accepting
    return None


def refusals_per_slice(samples: list[Sample], start: float) -> list[float | None]:
    """Refusals the hop counted in each SLICE_SECONDS of the window (None: /metrics never answered in it)."""
    out: list[float | None] = []
    for k in range(int(OVERLOAD_SECONDS // SLICE_SECONDS)):
        lo, hi = start + k * SLICE_SECONDS, start + (k + 1) * SLICE_SECONDS
        seen = [s.refused for s in samples if s.refused is not None and lo - 1.0 <= s.at <= hi + 1.0]
        out.append(max(seen) - min(seen) if len(seen) >= 2 else None)
    return out


@pytest.fixture
def overloaded_hop(tmp_path: Path):
    """The hop (native path required), its sink, and everything the soak starts: all stopped at teardown."""
    sink = WatchingSink()
    env = {"RECOHOP_PSEUDONYM_KEY": PSEUDONYM_KEY, "RECOHOP_NATIVE": "1", "RECOHOP_REQUIRE_NATIVE": "1"}
    if os.environ.get(HOP_PATH_ENV):  # as in the benchmark: a copy of processor/ to try, ahead of the repo
        env["PYTHONPATH"] = os.pathsep.join([os.environ[HOP_PATH_ENV], str(REPO_ROOT)])
    hop = start_hop_process(overload_config(sink.endpoint), tmp_path / "hop", env=env)
    try:
        yield hop, sink
    finally:
        hop.terminate()
        sink.stop()


def test_sustained_overload_for_a_minute_native(overloaded_hop, tmp_path: Path) -> None:
    hop, sink = overloaded_hop
    assert hop.metrics_url is not None
    rng = random.Random(11)
    # Large requests: a refusal costs the hop per request, the offer counts spans.
    workload = generate(requests=16, spans_per_request=3200, seed=11)
    workload_file = tmp_path / "workload.bin"
    write_workload(workload_file, workload.requests)

    # Idle baseline, once one small request has loaded every stage's lazy state and has been delivered.
    client = WellBehavedClient(hop.endpoint)
    raw, ids = error_trace_request(rng, 1)
    sink.watch(ids)
    assert client.send(raw)
    wait_until_drained(hop, sink, timeout=20)
    assert ids <= sink.arrived
    idle_rss = rss_bytes(hop.proc.pid)

    # Overload: the replay load generator from separate processes, fresh trace ids, for a minute; error
    # traces from a well-behaved client on a fixed schedule inside it; RSS and refusals sampled every second.
    sampler = Sampler(hop.proc.pid, hop.metrics_url)
    expected: set[SpanId] = set()
    acked_at: list[float | None] = []  # per error request: when it was acknowledged (None: never)

    def send_error_traces(window_start: float) -> None:
        gap = (OVERLOAD_SECONDS - 24.0) / ERROR_REQUESTS
        for k in range(ERROR_REQUESTS):  # from 3 s into the window, whatever retries cost
            if client.closing.wait(max(0.0, window_start + 3.0 + k * gap - time.monotonic())):
                return
            raw, ids = error_trace_request(rng, ERROR_TRACES_PER_REQUEST)
            expected.update(ids)
            sink.watch(ids)
            acked_at.append(time.monotonic() if client.send(raw) else None)

    clients = Clients(OVERLOAD_CLIENTS, ClientPlan(hop.endpoint, workload_file, workload.spans,
                                                   streams=OVERLOAD_STREAMS, channels=2, warmup=1.0,
                                                   duration=OVERLOAD_SECONDS))
    error_sender: threading.Thread | None = None
    try:
        window_start = clients.launch() + 1.0  # after the clients' 1 s warm-up
        sampler.start()
        error_sender = threading.Thread(target=send_error_traces, args=(window_start,), daemon=True,
                                        name="error-traces")
        error_sender.start()
        load: ClientResult = clients.collect()  # returns once every client process has ended its window
        samples = sampler.stop()
        error_sender.join(OVERLOAD_SECONDS)
        assert not error_sender.is_alive(), "the error-trace client was still retrying 60 s after the window"

        # Recovery, without a restart: health SERVING and an ordinary request accepted at once, then more.
        ordinary = TraceIdRewriter(workload.requests[0])
        recovered_after = seconds_until_accepted(hop.endpoint, ordinary.replay(0xFFFFF000), 30.0)
        assert recovered_after is not None, "the hop did not accept ordinary traffic again within 30 s"
        stopped = time.monotonic()
        after_raw, after_ids = error_trace_request(rng, 2)
        sink.watch(after_ids)
        with grpc.insecure_channel(hop.endpoint) as channel:
            call = channel.unary_unary(METHOD_PATHS["traces"])
            for k in range(1, 4):
                call(ordinary.replay(0xFFFFF000 + k), timeout=5.0)
            call(after_raw, timeout=5.0)
        wait_until_drained(hop, sink, timeout=60)
        delivered_after = time.monotonic() - stopped
    finally:  # nothing started here outlives the test
        client.close()
        clients.close()
        if sampler.is_alive():
            sampler.stop()
        if error_sender is not None:
            error_sender.join(15)

    by_trace: dict[bytes, set[SpanId]] = {}
    for trace_id, span_id in expected:
        by_trace.setdefault(trace_id, set()).add((trace_id, span_id))
    whole = sum(spans <= sink.arrived for spans in by_trace.values())
    refused_requests = metric_sum(hop.metrics_url, "recohop_refused_requests_total")
    per_slice = refusals_per_slice(samples, window_start)
    max_rss = peak_rss(hop.proc.pid)
    bound = rss_bound(idle_rss, max(len(r) for r in workload.requests))
    figures = {
        "offered_spans_per_s": round(load.offered_spans / OVERLOAD_SECONDS),
        "acked_spans_per_s": round(load.acked_spans / OVERLOAD_SECONDS),
        "factor_offered_over_acked": round(load.offered_spans / max(1, load.acked_spans), 1),
        "loadgen_refusals": load.errors, "loadgen_refusals_with_retry_info": load.retry_info,
        "hop_refused_requests_total": refused_requests, "hop_refusals_per_10s": per_slice,
        "idle_rss_mib": round(idle_rss / 2**20, 1), "peak_rss_mib": round(max_rss / 2**20, 1),
        "rss_bound_mib": round(bound / 2**20, 1), "rss_samples": len(samples),
        "rss_every_5s_mib": [round(s.rss / 2**20) for s in samples[::5]],
        "error_traces_whole": f"{whole}/{len(by_trace)}",
        "error_acked_by_s": round(max(t or 0.0 for t in acked_at) - window_start, 1) if acked_at else None,
        "error_longest_send_s": round(client.longest_send, 1), "error_client_refusals": client.refusals,
        "error_client_retry_info": client.with_retry_info,
        "recovered_after_s": round(recovered_after, 2), "delivered_after_s": round(delivered_after, 2),
    }
    print("overload soak:", figures)

    assert max_rss < bound, figures
    # Every error trace sent while overloaded was acknowledged and arrived whole.
    # (All were first sent inside the window; how long the last one waited is reported, not asserted.)
    assert len(acked_at) == ERROR_REQUESTS and None not in acked_at, (client.failures, figures)
    assert len(by_trace) == ERROR_REQUESTS * ERROR_TRACES_PER_REQUEST and whole == len(by_trace), figures
    assert after_ids <= sink.arrived, figures
    assert recovered_after <= RECOVERY_LIMIT_SECONDS, figures
    assert health_status(hop.endpoint) == health_pb2.HealthCheckResponse.SERVING
    # Push back: the load generator was answered RESOURCE_EXHAUSTED with RetryInfo, the hop counted every such
    # refusal, and it refused in every 10 s of the minute.
    assert load.retry_info.get("RESOURCE_EXHAUSTED", 0) > 0, (
        "overloaded, the hop refused only through gRPC's concurrency limit (no RetryInfo, not counted)", figures)
    assert refused_requests >= load.retry_info["RESOURCE_EXHAUSTED"], figures
    assert all(n is not None and n > 0 for n in per_slice), figures
