"""The native trace store (`processor/native/_tracestore.c` + `sampling/native_store.py`) against the pure-Python
TraceBuffer path of the same stage: the same inputs (spans, logs, late spans, memory pressure, max_spans,
shutdown) give the same decisions, the same bytes sent on and the same self-metrics."""

from __future__ import annotations

import gc
import os
import random
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from sampling_helpers import DEFAULT_POLICIES, Harness

from bench.sampling_workload import all_spans, make_traces, to_requests
from processor.native import load
from processor.sampling import native_store
from processor.sampling.native_store import NativeStore
from processor.stages import tail_sampling as stage_module

STORE = load("tracestore")
needs_store = pytest.mark.skipif(not native_store.available(), reason="native trace store not built")

# Every policy kind, including the ones evaluated per trace in Python (regex, numeric, resource, rate_limit).
ALL_KINDS = """
policies:
  - name: drop-health
    type: drop
    policy: {type: attribute, keys: [url.path, http.route], regex: "^/health"}
  - name: drop-canary
    type: drop
    policy: {type: and, policies: [{type: attribute, key: svc, value: canary, scope: resource},
                                   {type: not, policy: {type: status_code}}]}
  - {name: errors, type: status_code}
  - {name: error-logs, type: log_severity, min_severity: WARN}
  - {name: fallback, type: attribute, key: reco.fallback, value: true}
  - {name: strategies, type: attribute, key: reco.strategy, values: [popularity, cf], scope: span}
  - {name: big, type: attribute, key: reco.num, min: 10, max: 1000}
  - {name: placement-re, type: attribute, key: reco.placement, regex: "^e"}
  - {name: numeric-exact, type: attribute, key: reco.num, value: 7}
  - {name: slow-generate, type: latency, span_name: reco.generate, threshold: 1ms}
  - {name: slow-trace, type: latency, threshold: 5s}
  - {name: many, type: span_count, min: 6, max: 9}
  - {name: not-x, type: not, policy: {type: attribute, key: reco.placement, value: x}}
  - {name: limited, type: rate_limit, spans_per_second: 3}
  - {name: baseline, type: probabilistic, percentage: 30}
  - {name: everything, type: always}
"""
# Without the `not`/`always` catch-alls most traces are dropped and the later policies are exercised too.
SOME_KINDS = "\n".join(line for line in ALL_KINDS.splitlines() if "not-x" not in line and "always" not in line)


def policy_file(tmp: Path, text: str) -> Path:
    path = tmp / "policies.yaml"
    path.write_text(text)
    return path


def harness(native: bool, policies: Path, monkeypatch: pytest.MonkeyPatch, **config: Any) -> Harness:
    with monkeypatch.context() as patch:
        if not native:
            patch.setattr(stage_module, "native_store_available", lambda: False)
        h = Harness(policies, **config)
    assert isinstance(h.stage.store, NativeStore) == native
    return h


def sampling_metrics(h: Harness) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in h.registry.collect():
        if not family.name.startswith("recohop_sampling"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_created")):
                continue  # float sums may differ in the last bits (batch vs one-by-one additions)
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def drive(h: Harness, steps: list[tuple[str, Any]]) -> list[Any]:
    """Feed the steps; everything the stage sends on, serialized, in order."""
    sent: list[Any] = []
    for kind, item in steps:
        if kind == "spans":
            sent.extend(("spans", r.SerializeToString()) for r in h.send(ExportTraceServiceRequest.FromString(item)))
        elif kind == "logs":
            sent.extend(("logs", r.SerializeToString()) for r in h.send_logs(ExportLogsServiceRequest.FromString(item)))
        else:
            before = len(h.traces), len(h.logs)
            h.advance(item)
            sent.extend(("spans", r.SerializeToString()) for r in h.traces[before[0]:])
            sent.extend(("logs", r.SerializeToString()) for r in h.logs[before[1]:])
    before = len(h.traces), len(h.logs)
    h.shutdown()
    sent.extend(("spans", r.SerializeToString()) for r in h.traces[before[0]:])
    sent.extend(("logs", r.SerializeToString()) for r in h.logs[before[1]:])
    return sent


def canonical(sent: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """What was sent, with the spans or log records sorted inside each (resource, scope), and the scopes and
    resources of a request sorted too: order there carries no meaning. Late spans of decided traces come in
    request order natively but trace by trace in the Python buffer, and the native store serializes most kept
    traces itself, the rest (kept by probability, or rootless) after them."""
    out = []
    for kind, raw in sent:
        request = (ExportTraceServiceRequest if kind == "spans" else ExportLogsServiceRequest).FromString(raw)
        resources = request.resource_spans if kind == "spans" else request.resource_logs
        for resource in resources:
            scopes = resource.scope_spans if kind == "spans" else resource.scope_logs
            for scope in scopes:
                children = scope.spans if kind == "spans" else scope.log_records
                _sort(children)
            _sort(scopes)
        _sort(resources)
        out.append((kind, request.SerializeToString()))
    return out


def _sort(repeated: Any) -> None:
    ordered = sorted(repeated, key=lambda m: m.SerializeToString())
    copies = [type(m).FromString(m.SerializeToString()) for m in ordered]
    del repeated[:]
    repeated.extend(copies)


def compare(steps: list[tuple[str, Any]], policies: Path, monkeypatch: pytest.MonkeyPatch,
            **config: Any) -> tuple[Harness, Harness]:
    native = harness(True, policies, monkeypatch, **config)
    python = harness(False, policies, monkeypatch, **config)
    native_sent = drive(native, steps)
    python_sent = drive(python, steps)
    assert native.decisions == python.decisions
    assert canonical(native_sent) == canonical(python_sent)
    assert sampling_metrics(native) == sampling_metrics(python)
    assert len(native.stage.store.traces) == 0 and native.stage.store.groups.by_id == {}
    return native, python


def test_native_store_is_built_and_used(monkeypatch: pytest.MonkeyPatch) -> None:
    if STORE is None and os.environ.get("RECOHOP_NATIVE") == "0":
        pytest.skip("native scanners disabled by RECOHOP_NATIVE=0")
    assert STORE is not None, "processor.native._tracestore is not built (pip install -e .)"
    assert native_store.available()
    h = Harness()
    assert isinstance(h.stage.store, NativeStore)


@needs_store
@pytest.mark.parametrize("config", [{}, {"max_bytes": 20_000}, {"max_traces": 5}, {"max_spans_per_trace": 4},
                                    {"decision_cache_size": 2}])
def test_same_results_on_the_recommender_workload(config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    traces = make_traces(11, 1500)
    steps: list[tuple[str, Any]] = []
    for request in to_requests(all_spans(traces), per_request=300):
        steps += [("spans", request.SerializeToString()), ("advance", 0.3)]
    steps.append(("advance", 3.0))
    steps += [("spans", r.SerializeToString()) for r in to_requests(all_spans(traces[:50]), per_request=100)]  # late
    native, _ = compare(steps, DEFAULT_POLICIES, monkeypatch, **config)
    assert sum(1 for _, kept, _ in native.decisions if kept) > 20


def any_values(depth: int = 2) -> st.SearchStrategy[AnyValue]:
    scalars = st.one_of(
        st.builds(lambda v: AnyValue(string_value=v), st.sampled_from(["true", "popularity", "cf", "", "é", "email",
                                                                        "/health", "canary", "x"])),
        st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
        st.builds(lambda v: AnyValue(int_value=v), st.sampled_from([0, 7, 10, 500, 2000, -(2**63), 2**63 - 1])),
        st.builds(lambda v: AnyValue(double_value=v), st.sampled_from([7.0, 0.5, 12.5, -1e300])),
        st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=4)),
        st.just(AnyValue()),
    )
    if depth == 0:
        return scalars
    inner = any_values(depth - 1)
    return st.one_of(
        scalars,
        st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=2)),
        st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs])),
                  st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=2)),
    )


KEYS = ["reco.fallback", "reco.strategy", "reco.num", "reco.placement", "url.path", "http.route", "other", "svc"]
NAMES = ["reco.generate", "reco.fetch", ""]
TRACE_IDS = [b"\x01" * 16, b"\x02" * 16, bytes(range(16)), bytes(16), b"", b"\x03" * 8, b"\xff" * 16]


def attributes(draw: Any, n: int) -> list[KeyValue]:
    return [KeyValue(key=draw(st.sampled_from(KEYS)), value=draw(any_values())) for _ in range(n)]


@st.composite
def spans(draw: Any) -> Span:
    start = draw(st.sampled_from([0, 1_000, 10**9, 2**64 - 1]))
    span = Span(trace_id=draw(st.sampled_from(TRACE_IDS)), span_id=draw(st.binary(min_size=0, max_size=8)),
                parent_span_id=draw(st.sampled_from([b"", b"\x09" * 8])), name=draw(st.sampled_from(NAMES)),
                kind=draw(st.integers(0, 5)), start_time_unix_nano=start,
                end_time_unix_nano=draw(st.sampled_from([0, start, (start + 5_000_000) % 2**64, 2**64 - 1])),
                trace_state=draw(st.sampled_from(["", "ot=p:8", "vendor=x"])))
    span.attributes.extend(attributes(draw, draw(st.integers(0, 4))))
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(name=draw(st.sampled_from(["exception", "log", ""])))
        event.attributes.extend(attributes(draw, draw(st.integers(0, 1))))
    for _ in range(draw(st.integers(0, 1))):
        link = span.links.add(trace_id=draw(st.sampled_from(TRACE_IDS)), span_id=b"\x05" * 8)
        link.attributes.extend(attributes(draw, 1))
    if draw(st.booleans()):
        span.status.CopyFrom(Status(code=draw(st.integers(0, 2)), message="m"))
    return span


def resource_attrs(draw: Any) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=draw(st.sampled_from(["canary", "a"]))))
            for k in draw(st.lists(st.sampled_from(["svc", "service.name"]), max_size=2))]


@st.composite
def span_requests(draw: Any) -> bytes:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = request.resource_spans.add(schema_url=draw(st.sampled_from(["", "s"])))
        rs.resource.attributes.extend(resource_attrs(draw))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.sampled_from(["", "lib"]))
            ss.spans.extend(draw(st.lists(spans(), max_size=8)))
    return request.SerializeToString()


@st.composite
def log_requests(draw: Any) -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(resource_attrs(draw))
    sl = rl.scope_logs.add()
    for _ in range(draw(st.integers(1, 4))):
        sl.log_records.append(LogRecord(trace_id=draw(st.sampled_from(TRACE_IDS)),
                                        severity_number=draw(st.sampled_from([0, 9, 13, 17])),
                                        body=AnyValue(string_value="m")))
    return request.SerializeToString()


steps_strategy = st.lists(st.one_of(
    st.tuples(st.just("spans"), span_requests()),
    st.tuples(st.just("logs"), log_requests()),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 1.0, 2.5, 11.0])),
), min_size=1, max_size=8)


@needs_store
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps_strategy, text=st.sampled_from([ALL_KINDS, SOME_KINDS]),
       config=st.sampled_from([{}, {"max_bytes": 600}, {"max_traces": 2}, {"max_spans_per_trace": 3},
                               {"decision_cache_size": 2}]))
def test_same_results_on_random_requests(steps: list[tuple[str, Any]], text: str, config: dict,
                                         monkeypatch: pytest.MonkeyPatch, tmp_path_factory: Any) -> None:
    compare(steps, policy_file(tmp_path_factory.mktemp("p"), text), monkeypatch, **config)


@needs_store
@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=400))
def test_store_never_crashes_on_garbage(raw: bytes) -> None:
    assert STORE is not None
    store = STORE.Store((b"reco.generate",), ((b"reco.fallback", None), (b"k", (b"\n\x01k\x12\x02\x10\x01",))),
                        5, 10)
    result = store.intake(raw, 0.0, lambda res, scope: 0)
    assert result is None or isinstance(result, tuple)
    traces, nbytes, _ = store.stats()
    assert (traces == 0) == (nbytes == 0 or result is None or traces == 0)


def one_span_per_trace(ids: list[bytes]) -> bytes:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for tid in ids:
        spans.add(trace_id=tid, span_id=b"\x01" * 8, name="s", start_time_unix_nano=1, end_time_unix_nano=2)
    return request.SerializeToString()


@needs_store
def test_ids_aimed_at_one_bucket_rekey_the_tables_and_chains_stay_bounded() -> None:
    """The trace-id hash is keyed (no client can aim at a bucket); if ids ever landed in one bucket anyway (here
    aimed with the store's own bucket function, which no client sees), the store re-keys: no chain outgrows the
    bound, and every trace is still found."""
    assert STORE is not None
    store = STORE.Store((), (), 5, 1 << 12)
    rng = random.Random(4)
    target = store.bucket(b"\x01" * 16)
    aimed: list[bytes] = []
    while len(aimed) < 100:
        tid = rng.randbytes(16)
        if store.bucket(tid) == target:
            aimed.append(tid)
    assert store.intake(one_span_per_trace(aimed), 0.0, lambda res, scope: 0) is not None
    rekeys, longest = store.hash_stats()
    assert rekeys >= 1 and longest <= 33
    assert sorted(store.ids()) == sorted(aimed)
    batch = store.select_ids(aimed)  # found under the new key
    assert len(batch[0]) == 100 * STORE.RECORD_SIZE
    store.finish(b"\x01\x00\x00\x00" * 100)  # decisions cached under the current key, late spans follow them
    full, late, dropped, invalid, unused, added = store.intake(one_span_per_trace(aimed[:10]), 1.0,
                                                               lambda res, scope: 0)
    assert len(late) == 10 and added == 0


@needs_store
def test_store_is_collected_when_its_classifier_refers_back_to_it() -> None:
    """The store holds a Python callable (the classifier, a bound method of its owner), so it is a GC-tracked type."""
    assert STORE is not None

    class Owner:
        def classify(self, index: int, kv: bytes) -> int:
            return 0

    def cycle() -> weakref.ref:
        owner = Owner()
        owner.store = STORE.Store((), ((b"k", None),), 5, 10)
        owner.store.set_classifier(owner.classify)
        assert gc.is_tracked(owner.store)
        return weakref.ref(owner)

    gone = cycle()
    gc.collect()
    assert gone() is None
