"""Log records follow their trace's decision; an ERROR log keeps its trace; logs without a trace id pass."""

from __future__ import annotations

import random

from sampling_helpers import Harness

from bench.sampling_workload import log_request, make_trace, to_requests
from processor.sampling.consistent import keeps, rejection_threshold

INFO, ERROR = 9, 17


def ordinary_dropped_trace(rng: random.Random):  # noqa: ANN201 - a workload Trace
    trace = make_trace(rng)
    while keeps(trace.trace_id, rejection_threshold(1)):
        trace = make_trace(rng)
    return trace


def test_logs_follow_their_trace_and_error_log_keeps_it() -> None:
    rng = random.Random(1)
    kept, dropped, rescued = make_trace(rng, "fallback"), ordinary_dropped_trace(rng), ordinary_dropped_trace(rng)
    h = Harness()
    h.send_logs(log_request([(kept.trace_id, INFO, "k1"), (dropped.trace_id, INFO, "d1"),
                             (rescued.trace_id, ERROR, "scoring timed out")]))
    h.send(to_requests(kept.spans + dropped.spans + rescued.spans)[0])
    h.send_logs(log_request([(kept.trace_id, INFO, "k2")]))
    assert h.out_logs() == []  # buffered with their traces
    h.advance(2.1)
    decisions = {tid: (k, p) for tid, k, p in h.decisions}
    assert decisions[kept.trace_id] == (True, "fallback")
    assert decisions[dropped.trace_id] == (False, "none")
    assert decisions[rescued.trace_id] == (True, "error-logs")
    assert sorted(lr.body.string_value for lr in h.out_logs()) == ["k1", "k2", "scoring timed out"]
    counts = h.out_span_counts()
    assert counts[rescued.trace_id] == len(rescued.spans) and counts[dropped.trace_id] == 0
    assert h.metric("recohop_sampling_logs_total", {"outcome": "kept"}) == 3
    assert h.metric("recohop_sampling_logs_total", {"outcome": "dropped"}) == 1
    # Resource and scope of the logs are preserved.
    [request] = h.logs
    assert request.resource_logs[0].resource.attributes[0].value.string_value == "recommendation-service"
    assert request.resource_logs[0].scope_logs[0].scope.name == "recommender"


def test_late_logs_follow_the_cached_decision() -> None:
    rng = random.Random(2)
    kept, dropped = make_trace(rng, "error"), ordinary_dropped_trace(rng)
    h = Harness()
    h.send(to_requests(kept.spans + dropped.spans)[0])
    h.advance(2.1)
    out = h.send_logs(log_request([(kept.trace_id, INFO, "late-kept"), (dropped.trace_id, INFO, "late-dropped")]))
    bodies = [lr.body.string_value for r in out for rl in r.resource_logs for sl in rl.scope_logs
              for lr in sl.log_records]
    assert bodies == ["late-kept"]
    assert h.metric("recohop_sampling_logs_total", {"outcome": "late_kept"}) == 1
    assert h.metric("recohop_sampling_logs_total", {"outcome": "late_dropped"}) == 1


def test_logs_without_trace_id_pass_through() -> None:
    h = Harness()
    request = log_request([(b"", INFO, "startup"), (b"\0" * 16, ERROR, "no trace")])
    out = h.send_logs(request)
    assert out == [request]  # untouched, same message
    trace = make_trace(random.Random(3))
    mixed = h.send_logs(log_request([(b"", INFO, "plain"), (trace.trace_id, INFO, "traced")]))
    bodies = [lr.body.string_value for r in mixed for rl in r.resource_logs for sl in rl.scope_logs
              for lr in sl.log_records]
    assert bodies == ["plain"]
    assert h.metric("recohop_sampling_logs_total", {"outcome": "passed"}) == 3
    assert h.metric("recohop_sampling_logs_total", {"outcome": "buffered"}) == 1


def test_buffer_budget_includes_logs() -> None:
    rng = random.Random(4)
    traces = [make_trace(rng) for _ in range(40)]
    h = Harness(max_bytes=4096)
    for trace in traces:
        h.send_logs(log_request([(trace.trace_id, INFO, "x" * 300) for _ in range(5)]))
        assert h.stage.store.nbytes <= 4096
    assert h.metric("recohop_sampling_decided_early_total", {"reason": "max_bytes"}) > 20


def test_untraced_logs_rate_limited_per_severity() -> None:
    h = Harness(untraced_logs_per_second={"DEBUG": 2, "INFO": 5})
    records = [(b"", 5, f"debug {i}") for i in range(10)] + [(b"", 9, f"info {i}") for i in range(10)] + \
        [(b"", 17, f"error {i}") for i in range(10)]
    out = h.send_logs(log_request(records))
    bodies = [lr.body.string_value for r in out for rl in r.resource_logs for sl in rl.scope_logs
              for lr in sl.log_records]
    assert sum(b.startswith("debug") for b in bodies) == 2
    assert sum(b.startswith("info") for b in bodies) == 5
    assert sum(b.startswith("error") for b in bodies) == 10  # ERROR not limited
    assert h.metric("recohop_sampling_logs_total", {"outcome": "rate_limited"}) == 13
    h.clock.now += 1.0  # the buckets refill
    out = h.send_logs(log_request([(b"", 9, "info again")]))
    assert out and h.metric("recohop_sampling_logs_total", {"outcome": "passed"}) == 18
