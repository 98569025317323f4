"""The native span-metrics intake (`processor/native/_spanscan.c` + `processor/spanmetrics/native.py`) against
the pure-Python intake (`Deriver.consume`, the reference): the same requests give the same series (in the same
slot order), counts, bucket counts, overflow folds, exemplar candidates and exemplars, on the recommender
benchmark workload and on random OTLP requests."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from otlp_strategies import ALL_INTS
from otlp_strategies import any_values as otlp_any_values
from prometheus_client import CollectorRegistry
from spanmetrics_helpers import DEFAULT_RULES, build, scrape

from bench.spanmetrics_workload import make_recos, requests_for
from bench.workload import generate
from processor.native import load
from processor.otlp_values import varint
from processor.spanmetrics import derive as derive_module
from processor.spanmetrics.native import CANDIDATE
from processor.stages.base import StageContext

NATIVE = load("spanscan")
needs_native = pytest.mark.skipif(NATIVE is None, reason="native scanner not built")

# Rules that use every label source and rule kind, with small limits so overflow and top-K happen.
EXTRA_RULES = """
rules:
  - name: t_calls_total
    kind: counter
    spans_regex: "^(reco\\\\.|x)"
    series_limit: 6
    labels:
      service: {resource: service.name, default: none}
      region: {resource: cloud.region}
      name: {span: name}
      kind: {span: kind}
      code: {span: status_code}
      placement: {attribute: reco.placement, default: unknown}
      pos: {attribute: reco.position, buckets: [1, 3, 10], default: "0"}
  - name: t_revenue_total
    kind: counter
    spans: [reco.conversion, reco.generate, x]
    value_attribute: reco.revenue
    labels:
      placement: {attribute: reco.placement}
  - name: t_impressions_total
    kind: position_split
    spans: [reco.generate, x]
    count_attribute: reco.num_results
    position_buckets: [1, 3]
    series_limit: 5
    labels:
      variant: {attribute: experiment.variant}
  - name: t_seconds
    kind: histogram
    spans_regex: "."
    buckets: [0.001, 0.5, 2.0]
    top_k: 3
    labels:
      name: {span: name}
      flag: {attribute: reco.cache_hit}
"""


def make_stage(native: bool, rules: Path, clock: list[float], series_limit: int = 2000) -> tuple[Any, Any]:
    ctx = StageContext(registry=CollectorRegistry(), clock=lambda: clock[0])
    stage, ctx = build("spanmetrics", {"rules": str(rules), "series_limit": series_limit,
                                       "exemplars": {"per_bucket": 2, "max_traces": 50}}, ctx=ctx)
    if not native:
        stage.deriver.native = None
    return stage, ctx


def state(stage: Any, ctx: Any) -> dict[str, Any]:
    """Everything the derived metrics hold, in comparable form (float sums apart: their addition order
    differs between per-span and per-group sums)."""
    deriver = stage.deriver
    exact: list[Any] = []
    sums: list[float] = []
    for metric in deriver.snapshot():
        for p in metric.points:
            exact.append((metric.name, sorted(p.labels.items()), p.buckets,
                          sorted((b, e.trace_id, e.span_id, e.value, e.time_unix_nano) for b, e in p.exemplars.items())))
            sums.append(p.value)
    aggs = ([deriver.red] if deriver.red else []) + [s.agg for s in deriver.sinks]
    series = [(a.name, list(a.series.keys), sorted(map(repr, a.series.limiter.admitted))) for a in aggs]
    reservoir = deriver.reservoir
    pending = [(tid, added, [(c.agg.name, c.slot, c.bucket, c.exemplar) for c in cands])
               for tid, (added, cands) in reservoir.pending.items()] if reservoir else []
    self_metrics = {k: v for k, v in scrape(ctx.registry).samples.items()
                    if k[0].startswith("recohop_cardinality") and not k[0].endswith("_created")}
    return {"exact": exact, "sums": sums, "series": series, "pending": pending, "self": self_metrics}


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["series"] == b["series"]
    assert a["exact"] == b["exact"]
    assert a["pending"] == b["pending"]
    assert a["self"] == b["self"]
    assert len(a["sums"]) == len(b["sums"])
    for x, y in zip(a["sums"], b["sums"], strict=True):
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9, abs=1e-12)


def feed(stage: Any, ctx: Any, requests: list[bytes], clock: list[float], decide: bool) -> None:
    for i, raw in enumerate(requests):
        clock[0] = float(i)
        assert stage.on_trace_bytes(raw) == [raw]
        if decide and i % 2:  # decide some traces now and then, so candidates get freed and attached
            for tid, _ in list(stage.deriver.reservoir.pending.items())[::3]:
                ctx.decisions.publish(tid, sum(tid) % 2 == 0, "test")
    stage.flush(float(len(requests)) + 500)  # expires what waits beyond max_wait


@pytest.fixture(scope="module")
def extra_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    text = DEFAULT_RULES.read_text() + "\n" + "\n".join(EXTRA_RULES.strip().splitlines()[1:]) + "\n"
    path.write_text(text)
    return path


def run(requests: list[bytes], native: bool, rules: Path, decide: bool = True, series_limit: int = 2000
        ) -> dict[str, Any]:
    clock = [0.0]
    stage, ctx = make_stage(native, rules, clock, series_limit)
    feed(stage, ctx, requests, clock, decide)
    return state(stage, ctx)


def test_native_intake_is_built_and_used() -> None:
    if NATIVE is None and os.environ.get("RECOHOP_NATIVE") == "0":
        pytest.skip("native scanners disabled by RECOHOP_NATIVE=0")
    assert NATIVE is not None, "processor.native._spanscan is not built (pip install -e .)"
    assert derive_module._native is NATIVE
    stage, _ = build("spanmetrics", {"rules": str(DEFAULT_RULES)})
    raw = requests_for(make_recos(20))[0].SerializeToString()
    assert stage.deriver.native is not None and stage.deriver.consume_bytes(raw) is True


@needs_native
def test_same_results_on_the_benchmark_workload(extra_rules: Path) -> None:
    requests = generate(requests=12, spans_per_request=400, seed=5, special_rate=0.2, click_rate=0.2).requests
    native = run(requests, True, extra_rules)
    python = run(requests, False, extra_rules)
    assert_same(native, python)
    assert any(e for _, _, _, e in native["exact"]), "kept traces must have produced exemplars"
    assert native["self"][("recohop_cardinality_folded_total", frozenset({("metric", "t_calls_total")}))] > 0


@needs_native
def test_same_results_on_the_recommender_workload_with_tight_limits() -> None:
    requests = [r.SerializeToString() for r in requests_for(make_recos(600, seed=3), batch=40)]
    assert_same(run(requests, True, DEFAULT_RULES, series_limit=7), run(requests, False, DEFAULT_RULES, series_limit=7))



@needs_native
def test_names_and_values_alike_in_length_and_last_byte_are_told_apart(extra_rules: Path) -> None:
    """The scanner's interner compares the last id per (length, last byte) before hashing: names and label values
    that share such a bucket, alternating span after span, must still count as the distinct strings they are."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(60):
        span = scope.spans.add(name=("xa1", "xb1", "xa1", "xc1")[i % 4], trace_id=bytes([i + 1]) * 16,
                               span_id=bytes([i + 1]) * 8, start_time_unix_nano=10**18,
                               end_time_unix_nano=10**18 + 1000 * (i + 1))
        span.attributes.add(key="reco.placement", value=AnyValue(string_value=("aa9", "bb9", "cb9")[i % 3]))
    raw = request.SerializeToString()
    native = run([raw], True, extra_rules, decide=False)
    assert_same(native, run([raw], False, extra_rules, decide=False))
    names = {dict(labels).get("name") for metric, labels, _, _ in native["exact"] if metric == "t_calls_total"}
    assert {"xa1", "xb1", "xc1"} <= names
    placements = {dict(labels).get("placement") for metric, labels, _, _ in native["exact"]
                  if metric == "t_calls_total"}
    assert {"aa9", "bb9", "cb9"} <= placements


@needs_native
def test_known_groups_are_added_by_the_scanner_alone() -> None:
    """Once a rule's group keys are in its Slots, scan adds those groups to the arrays itself: the request leaves
    Python nothing (no output per rule, no span table), and the totals still equal the Python path's."""
    raw = generate(requests=1, spans_per_request=400, seed=5, special_rate=0.2, click_rate=0.2).requests[0]
    stages = {}
    for native in (True, False):
        clock = [0.0]
        ctx = StageContext(registry=CollectorRegistry(), clock=lambda c=clock: c[0])  # type: ignore[misc]
        stages[native] = build("spanmetrics", {"rules": str(DEFAULT_RULES), "exemplars": {"enabled": False}},
                               ctx=ctx)
        if not native:
            stages[native][0].deriver.native = None
        feed(*stages[native], [raw], clock, decide=False)  # the first request: Python resolves every key
    intake = stages[True][0].deriver.native
    assert all(rule.cache.count() for rule in intake.rules)
    targets = tuple(rule.target(intake.reservoir) for rule in intake.rules)
    scanned = NATIVE.scan(raw, intake.attr_keys, intake.res_keys, intake.specs, intake.names, intake._resolve,
                          targets)
    assert scanned == [None] * len(intake.rules)
    for native in (True, False):  # the same request once more on both paths (the scan above added it too)
        stages[native][0].on_trace_bytes(raw)
    stages[False][0].on_trace_bytes(raw)
    assert_same(state(*stages[True]), state(*stages[False]))


@needs_native
def test_candidates_where_the_reservoir_is_full_are_reported_only_when_it_could_evict(extra_rules: Path) -> None:
    """`room` (traces the reservoir takes before it evicts) decides whether scan reports the candidates it set
    apart where `full` is marked: with more candidates than room, an eviction may free a place for them."""
    clock = [0.0]
    stage, _ = make_stage(True, extra_rules, clock)  # per_bucket 2: buckets fill after two requests
    intake = stage.deriver.native
    work = generate(requests=3, spans_per_request=400, seed=5, special_rate=0.2, click_rate=0.2).requests
    for raw in work[:2]:
        stage.on_trace_bytes(raw)
    targets = tuple(rule.target(intake.reservoir) for rule in intake.rules)

    def skipped(room: int) -> list[int | None]:
        outs = NATIVE.scan(work[2], intake.attr_keys, intake.res_keys, intake.specs, intake.names,
                           intake._resolve, targets, None, room)
        return [None if out is None or out[6] is None else len(out[6]) // CANDIDATE.size for out in outs]

    always, roomy, tight = skipped(-1), skipped(10**6), skipped(0)
    assert any(always) and always == tight  # set apart where full, and reported
    assert all(n is None for n in roomy)  # nothing could be evicted: not reported at all


@needs_native
def test_slots_hold_a_slot_or_split_pairs_per_key_up_to_their_bound() -> None:
    slots = NATIVE.Slots(3)
    assert slots.get(b"a") is None and slots.count() == 0
    assert slots.put(b"a", 3) and slots.get(b"a") == 3
    assert slots.put(b"", ((1, 2.0), (4, 0.5))) and slots.get(b"") == ((1, 2.0), (4, 0.5))
    assert slots.put(b"a", ()) and slots.get(b"a") == ()  # replaced: a position split with nothing to add
    assert slots.put(b"b", 0) and slots.count() == 3
    assert not slots.put(b"c", 1) and slots.get(b"c") is None and slots.count() == 3  # full: not remembered
    assert slots.put(b"b", 7) and slots.get(b"b") == 7  # a known key is still replaced
    for bad, error in ((-1, ValueError), (((-1, 1.0),), ValueError), ("x", TypeError), (((1,),), TypeError),
                       (((1, "w"),), TypeError), (2**70, OverflowError)):
        with pytest.raises(error):
            slots.put(b"b", bad)
    assert slots.get(b"b") == 7
    with pytest.raises(TypeError):
        slots.get("a")
    with pytest.raises(ValueError):
        NATIVE.Slots(0)
    many = NATIVE.Slots(5000)
    keys = [i.to_bytes(4, "little") + b"k" * (i % 5) for i in range(3000)]  # grows its table many times
    assert all(many.put(k, i) for i, k in enumerate(keys))
    assert [many.get(k) for k in keys] == list(range(3000)) and many.count() == 3000


# ---------------------------------------------------------------- random requests

KEYS = ["reco.placement", "reco.position", "reco.revenue", "reco.num_results", "experiment.variant",
        "reco.cache_hit", "reco.model_version", "reco.strategy", "reco.cold_start", "reco.fallback", "other", ""]
NAMES = ["reco.generate", "reco.conversion", "reco.click", "reco.fetch_embeddings", "x", "", "é\u00a0"]
TRACE_IDS = [b"\x01" * 16, b"\x02" * 16, bytes(16), b"", b"\x03" * 8, b"\x04" * 16, b"\x05" * 17]


def any_values(depth: int = 1) -> st.SearchStrategy[AnyValue]:
    return otlp_any_values(
        depth, strings=st.sampled_from(["home", "cart", "", "A", "true", "x" * 200]),
        ints=st.one_of(st.integers(-3, 15), ALL_INTS), floats=st.one_of(st.floats(), st.sampled_from([0.0, 2.5, 1e300])),
        keys=st.sampled_from(KEYS), binary_size=4, list_size=2)


VALUES = any_values()
SCALARS = any_values(0)


def key_values(draw: Any, n: int) -> list[KeyValue]:
    out = []
    for _ in range(n):
        kv = KeyValue(key=draw(st.sampled_from(KEYS)))
        if draw(st.integers(0, 5)):  # sometimes no value at all (an empty AnyValue when parsed)
            kv.value.CopyFrom(draw(VALUES))
        out.append(kv)
    return out


@st.composite
def spans(draw: Any) -> Span:
    span = Span(trace_id=draw(st.sampled_from(TRACE_IDS)), span_id=draw(st.binary(max_size=9)),
                name=draw(st.sampled_from(NAMES)), kind=draw(st.integers(0, 7)),
                start_time_unix_nano=draw(st.sampled_from([0, 1, 10**9, 2**64 - 1])),
                end_time_unix_nano=draw(st.sampled_from([0, 2, 3 * 10**6, 10**9 + 7 * 10**8, 2**64 - 1])))
    span.attributes.extend(key_values(draw, draw(st.integers(0, 6))))
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(name=draw(st.sampled_from(["exception", "log"])))
        event.attributes.extend(key_values(draw, draw(st.integers(0, 2))))
    if draw(st.booleans()):
        link = span.links.add(trace_id=draw(st.sampled_from(TRACE_IDS)), span_id=b"\x07" * 8)
        link.attributes.extend(key_values(draw, 1))
    if draw(st.booleans()):
        span.status.CopyFrom(Status(code=draw(st.integers(0, 4)), message="m"))
    return span


@st.composite
def requests(draw: Any) -> bytes:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = request.resource_spans.add()
        for _ in range(draw(st.integers(0, 3))):
            kv = rs.resource.attributes.add(key=draw(st.sampled_from(["service.name", "cloud.region", "other"])))
            kv.value.CopyFrom(draw(SCALARS))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.sampled_from(["", "lib"]))
            ss.spans.extend(draw(st.lists(spans(), max_size=6)))
    return request.SerializeToString()


@needs_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(requests(), min_size=1, max_size=4))
def test_same_results_on_random_requests(batch: list[bytes], extra_rules: Path) -> None:
    assert_same(run(batch, True, extra_rules), run(batch, False, extra_rules))


def test_string_weights_and_field_order_fall_back_or_match(extra_rules: Path) -> None:
    """Shapes the scanner leaves to Python (a string-valued weight) or reads differently from an SDK's order
    (attributes before the name, a repeated name and status) still give the reference result."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    span = rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, name="reco.conversion", end_time_unix_nano=5)
    span.attributes.add(key="reco.revenue").value.string_value = "12.5"
    span.attributes.add(key="reco.placement").value.string_value = "home"
    string_weight = request.SerializeToString()
    # attributes first, then the name twice (the last wins), then the status twice (merged: last code wins)
    attrs = b"".join(b"\x4a" + bytes([len(kv)]) + kv for kv in (
        KeyValue(key="reco.placement", value=AnyValue(string_value="cart")).SerializeToString(),
        KeyValue(key="reco.revenue", value=AnyValue(double_value=3.0)).SerializeToString()))
    body = (b"\x0a\x10" + b"\x02" * 16 + attrs + b"\x2a\x01x" + b"\x2a\x0freco.conversion"
            + b"\x7a\x02\x18\x02" + b"\x7a\x02\x18\x01" + b"\x41" + (7).to_bytes(8, "little"))
    spans_field = b"\x12" + varint(len(body)) + body
    scope_field = b"\x12" + varint(len(spans_field)) + spans_field
    raw = b"\x0a" + varint(len(scope_field)) + scope_field
    odd = ExportTraceServiceRequest.FromString(raw)
    parsed = odd.resource_spans[0].scope_spans[0].spans[0]
    assert parsed.name == "reco.conversion" and parsed.status.code == 1
    batch = [string_weight, odd.SerializeToString(), raw]
    native, python = run(batch, True, extra_rules), run(batch, False, extra_rules)
    assert_same(native, python)
    revenue = [v for (name, labels, _, _), v in zip(native["exact"], native["sums"], strict=True)
               if name == "reco_revenue_total"]
    assert sorted(revenue) == [6.0, 12.5]
    if NATIVE is not None:
        stage, _ = build("spanmetrics", {"rules": str(extra_rules)})
        assert stage.deriver.consume_bytes(string_weight) is False  # left to the Python path
        assert stage.deriver.consume_bytes(batch[2]) is True


VALID = requests_for(make_recos(2))[0].SerializeToString()


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300), cut=st.integers(0, len(VALID)))
def test_garbage_and_truncation_never_crash_and_match_when_valid(raw: bytes, cut: int, extra_rules: Path) -> None:
    """Bytes that protobuf accepts give the reference result; any other bytes are scanned safely (the receiver
    never hands those to a stage: it validates every request first)."""
    for data in (raw, VALID[:cut], VALID[:cut] + raw):
        try:
            ExportTraceServiceRequest.FromString(data)
        except DecodeError:
            stage, _ = build("spanmetrics", {"rules": str(extra_rules)})
            try:
                assert stage.deriver.consume_bytes(data) in (True, False)
            except DecodeError:
                pass  # what parsing these bytes raises too
            continue
        assert_same(run([data], True, extra_rules), run([data], False, extra_rules))
