"""The tail-sampling stage on real OTLP protobuf: whole-trace decisions, timing, late spans, memory pressure."""

from __future__ import annotations

import math
import random

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sampling_helpers import Harness, attributes

from bench.sampling_workload import SPECIAL_KINDS, all_spans, make_trace, make_traces, to_requests
from processor.sampling.consistent import keeps, rejection_threshold

TH_1PCT = "fd70a3d70a3d71"


def test_special_traces_are_kept_whole_with_their_reason() -> None:
    rng = random.Random(11)
    special = [make_trace(rng, kind) for kind in SPECIAL_KINDS for _ in range(20)]
    ordinary = [make_trace(rng) for _ in range(300)]
    traces = special + ordinary
    rng.shuffle(traces)
    h = Harness()
    for request in to_requests(all_spans(traces), per_request=97):  # traces straddle requests
        h.send(request)
    h.advance(2.5)
    counts = h.out_span_counts()
    expected_policy = {"error": "errors", "exception": "errors", "fallback": "fallback",
                       "cold_start": "cold-start", "popularity": "popularity-strategy", "slow": "slow-generate"}
    by_id = {s.span_id: s for s in h.out_spans()}
    for trace in special:
        assert counts[trace.trace_id] == len(trace.spans), trace.kind
        root = by_id[trace.spans[-1].span_id]
        assert attributes(root)["sampling.policy"] == expected_policy[trace.kind]
        for child in trace.spans[:-1]:  # passed on byte-identical
            assert by_id[child.span_id].SerializeToString() == child.SerializeToString()
        marked = type(root)()
        marked.CopyFrom(trace.spans[-1])
        marked.attributes.add(key="sampling.policy").value.string_value = expected_policy[trace.kind]
        assert root == marked  # the root changed only by the added attribute
    assert len(h.decisions) == len(traces)
    assert h.stage.store.traces == {}
    assert h.metric("recohop_sampling_decisions_total", {"policy": "fallback", "decision": "keep"}) == 20


def test_one_percent_of_ordinary_traces_kept_whole_and_consistent() -> None:
    traces = make_traces(seed=5, count=20_000, special_fraction=0.0)
    h = Harness()
    for request in to_requests(all_spans(traces), per_request=512):
        h.send(request)
    h.advance(2.2)
    counts = h.out_span_counts()
    kept = {t.trace_id for t in traces if counts[t.trace_id]}
    n, p = len(traces), 0.01
    tolerance = 4 * math.sqrt(n * p * (1 - p))  # 4 sigma of the binomial: ~56 traces
    assert abs(len(kept) - n * p) <= tolerance, len(kept)
    threshold = rejection_threshold(1)
    assert kept == {t.trace_id for t in traces if keeps(t.trace_id, threshold)}  # the consistent rule, exactly
    for trace in traces:
        if trace.trace_id in kept:
            assert counts[trace.trace_id] == len(trace.spans)
    for span in h.out_spans():
        assert span.trace_state.startswith(f"ot=th:{TH_1PCT}")
    assert h.metric("recohop_sampling_decisions_total", {"policy": "baseline", "decision": "keep"}) == len(kept)
    assert h.metric("recohop_sampling_decisions_total", {"policy": "none", "decision": "drop"}) == n - len(kept)


def test_trace_split_across_requests_is_decided_together() -> None:
    rng = random.Random(3)
    trace = make_trace(rng, "error", nspans=12)
    trace.spans[0].status.code = 0
    h = Harness()
    # The error is on the root, which comes last, in a third request 1.5 s after the first.
    h.send(to_requests(trace.spans[:5])[0])
    h.advance(1.0)
    h.send(to_requests(trace.spans[5:11])[0])
    h.advance(0.5)
    assert h.out_spans() == []
    h.send(to_requests(trace.spans[11:])[0])
    h.advance(1.9)
    assert h.out_spans() == []  # root_grace (2 s) not over yet
    h.advance(0.2)
    assert h.out_span_counts()[trace.trace_id] == 12


def test_trace_without_root_is_decided_after_decision_wait() -> None:
    trace = make_trace(random.Random(4), "fallback")
    children_only = [s for s in trace.spans if s.parent_span_id]
    children_only[0].attributes.add(key="reco.fallback").value.bool_value = True
    h = Harness(decision_wait="3s")
    h.send(to_requests(children_only)[0])
    h.advance(2.9)
    assert h.decisions == []
    h.advance(0.2)
    assert h.decisions == [(trace.trace_id, True, "fallback")]
    # No root arrived: every span names the policy.
    assert all(attributes(s)["sampling.policy"] == "fallback" for s in h.out_spans())
    assert len(h.out_spans()) == len(children_only)


def test_late_spans_follow_the_decision() -> None:
    rng = random.Random(8)
    kept, dropped = make_trace(rng, "slow"), make_trace(rng)
    while keeps(dropped.trace_id, rejection_threshold(1)):
        dropped = make_trace(rng)
    h = Harness()
    h.send(to_requests(kept.spans[:-2] + dropped.spans[:-2])[0])
    h.advance(10.1)  # decision_wait: decided without their last spans (the roots)
    assert {tid: k for tid, k, _ in h.decisions} == {kept.trace_id: True, dropped.trace_id: False}
    before = len(h.out_spans())
    out = h.send(to_requests(kept.spans[-2:] + dropped.spans[-2:])[0])
    late = [s for r in out for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert {s.span_id for s in late} == {s.span_id for s in kept.spans[-2:]}  # forwarded at once
    late_root = next(s for s in late if not s.parent_span_id)
    assert attributes(late_root)["sampling.policy"] == "slow-trace"
    assert len(h.out_spans()) == before + 2
    assert h.metric("recohop_sampling_late_spans_total", {"decision": "keep"}) == 2
    assert h.metric("recohop_sampling_late_spans_total", {"decision": "drop"}) == 2
    assert h.stage.store.traces == {}


def test_memory_pressure_decides_early_within_budget_and_keeps_every_error() -> None:
    traces = make_traces(seed=21, count=4000, special_fraction=0.0)
    rng = random.Random(22)  # not 21: the same seed would repeat trace ids
    errors = [make_trace(rng, "error") for _ in range(120)]
    mixed = traces + errors
    rng.shuffle(mixed)
    budget = 64 * 1024
    h = Harness(max_bytes=budget)
    for request in to_requests(all_spans(mixed), per_request=200):
        h.send(request)
        assert h.stage.store.nbytes <= budget
        assert h.metric("recohop_sampling_buffer_bytes") <= budget
        h.clock.now += 0.01
    h.shutdown()
    counts = h.out_span_counts()
    for trace in errors:
        assert counts[trace.trace_id] == len(trace.spans)
    assert h.metric("recohop_sampling_decided_early_total", {"reason": "max_bytes"}) > 1000
    assert len(h.decisions) == len(mixed)  # nothing dropped undecided


def test_max_traces_and_max_spans_decide_early() -> None:
    rng = random.Random(2)
    h = Harness(max_traces=10, max_spans_per_trace=50)
    big = make_trace(rng, "error", nspans=60)
    h.send(to_requests(big.spans)[0])
    assert h.metric("recohop_sampling_decided_early_total", {"reason": "max_spans"}) == 1
    # Decided early (the whole request was buffered first), kept whole.
    assert h.out_span_counts()[big.trace_id] == 60
    small = [make_trace(rng) for _ in range(25)]
    h.send(to_requests(all_spans(small))[0])
    # Over the budget, traces are decided down to 90 % of it (RELIEVE_TO): 25 - 9.
    assert len(h.stage.store.traces) <= 9
    assert h.metric("recohop_sampling_decided_early_total", {"reason": "max_traces"}) == 16


def test_health_checks_are_dropped_even_with_errors() -> None:
    trace = make_trace(random.Random(6), "error")
    trace.spans[-1].attributes.add(key="url.path").value.string_value = "/healthz"
    h = Harness()
    h.send(to_requests(trace.spans)[0])
    h.advance(2.1)
    assert h.decisions == [(trace.trace_id, False, "health-checks")]
    assert h.out_spans() == []


def test_error_found_only_by_status_not_by_int_attribute() -> None:
    """`\\x18\\x02` (the ERROR trigger) also encodes an int attribute == 2: confirmed by parsing."""
    trace = make_trace(random.Random(9), "ordinary")
    while keeps(trace.trace_id, rejection_threshold(1)):
        trace = make_trace(random.Random(trace.trace_id[0]), "ordinary")
    trace.spans[0].attributes.add(key="reco.position").value.int_value = 2
    h = Harness()
    h.send(to_requests(trace.spans)[0])
    h.advance(2.1)
    assert h.decisions == [(trace.trace_id, False, "none")]
    trace.spans[1].status.code = 2
    h2 = Harness()
    h2.send(to_requests(trace.spans)[0])
    h2.advance(2.1)
    assert h2.decisions == [(trace.trace_id, True, "errors")]


def test_named_span_latency_reads_durations_with_or_without_span_kind() -> None:
    trace = make_trace(random.Random(12), "ordinary")
    root = trace.spans[-1]
    root.kind = Span.SPAN_KIND_UNSPECIFIED  # no kind field on the wire
    root.end_time_unix_nano = root.start_time_unix_nano + 700_000_000
    policy_h = Harness()
    policy_h.send(to_requests(trace.spans)[0])
    policy_h.advance(2.1)
    assert policy_h.decisions[0][1:] == (True, "slow-generate")


def test_resources_and_scopes_are_preserved() -> None:
    rng = random.Random(13)
    trace = make_trace(rng, "error")
    a = to_requests(trace.spans[:4], service="svc-a")[0]
    b = to_requests(trace.spans[4:], service="svc-b")[0]
    b.resource_spans[0].scope_spans[0].scope.version = "2.0"
    b.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    h = Harness()
    h.send(a)
    h.send(b)
    h.advance(2.1)
    [out] = h.traces
    got = {}
    for rs in out.resource_spans:
        service = rs.resource.attributes[0].value.string_value
        for ss in rs.scope_spans:
            got[(service, rs.schema_url, ss.scope.name, ss.scope.version)] = len(ss.spans)
    roots = [s for s in h.out_spans() if not s.parent_span_id]
    assert [attributes(r)["sampling.policy"] for r in roots] == ["errors"]
    assert got == {("svc-a", "", "recommender", ""): 4,
                   ("svc-b", "https://opentelemetry.io/schemas/1.26.0", "recommender", "2.0"): len(trace.spans) - 4}
    assert h.stage.store.groups.by_id == {}  # interned groups are released with their traces


def test_self_metrics_are_published() -> None:
    h = Harness()
    traces = make_traces(seed=1, count=200)
    for request in to_requests(all_spans(traces)):
        h.send(request)
    assert h.metric("recohop_sampling_buffer_traces") == 200
    assert h.metric("recohop_sampling_buffer_bytes") > 0
    h.advance(2.1)
    assert h.metric("recohop_sampling_buffer_traces") == 0
    assert h.metric("recohop_sampling_decision_latency_seconds_count") == 200
    assert h.metric("recohop_sampling_decision_latency_seconds_bucket", {"le": "2.25"}) == 200
    assert h.metric("recohop_sampling_decision_latency_seconds_bucket", {"le": "1.5"}) == 0
