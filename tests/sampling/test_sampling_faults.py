"""Faults in tail sampling (issue 18): an exception at any step of intake or decision leaves the stage serving,
loses no buffered trace, sends none twice, and is counted in `recohop_sampling_faults_total{step}`. The C store
takes bad callback results (gids out of range, non-ints, failing or odd classifiers) without changing state."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sampling_helpers import Harness

import processor.stages.tail_sampling as stage_module
from bench.sampling_workload import all_spans, make_trace, to_requests
from processor.native import load
from processor.sampling import native_store
from processor.sampling.buffer import TraceBuffer
from processor.sampling.emit import Outbox
from processor.sampling.metrics import FAULT_STEPS
from processor.sampling.native_store import NativeStore
from processor.sampling.policies.batch import UNKNOWN_CLASS
from processor.sampling.policies.policyset import BatchDecider

STORE = load("tracestore")
needs_store = pytest.mark.skipif(not native_store.available(), reason="native trace store not built")
KEEP_ALL = "policies:\n  - {name: all, type: always}\n"


class Boom(RuntimeError):
    pass


def once(fn: Callable[..., Any], after: int = 0) -> Callable[..., Any]:
    """fn, except that call number `after` (0-based) raises Boom."""
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == after + 1:
            raise Boom("injected")
        return fn(*args, **kwargs)
    return wrapped


def added_then_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, except that its first call raises Boom once it has done its work."""
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:
            raise Boom("injected")
        return result
    return wrapped


class StoreProxy:
    """The native store with some methods replaced (a C type's methods cannot be patched in place)."""

    def __init__(self, store: Any, **replaced: Callable[..., Any]) -> None:
        self._store = store
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def make(tmp_path: Path, native: bool, monkeypatch: pytest.MonkeyPatch, **config: Any) -> Harness:
    policies = tmp_path / "keep-all.yaml"
    policies.write_text(KEEP_ALL)
    with monkeypatch.context() as patch:
        if not native:
            patch.setattr(stage_module, "native_store_available", lambda: False)
        h = Harness(policies, **config)
    assert isinstance(h.stage.store, NativeStore) == native
    return h


def workload(seed: int = 3, count: int = 40) -> tuple[list[Any], dict[bytes, int]]:
    rng = random.Random(seed)
    traces = [make_trace(rng) for _ in range(count)]
    return list(to_requests(all_spans(traces), per_request=37)), {t.trace_id: len(t.spans) for t in traces}


def faults(h: Harness) -> dict[str, float]:
    return {step: h.metric("recohop_sampling_faults_total", {"step": step}) for step in FAULT_STEPS}


def run_to_end(h: Harness, requests: list[Any]) -> None:
    for request in requests:
        h.send(request)
    h.advance(3.0)
    h.advance(11.0, step=1.0)  # decision_wait for whatever a fault left behind
    h.shutdown()


def assert_all_sent_once(h: Harness, expected: dict[bytes, int]) -> None:
    counts = h.out_span_counts()
    assert dict(counts) == expected  # every span of every trace, none twice
    assert not h.stage.store.traces


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_store), False])
def test_fault_counter_exists_at_zero_for_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     native: bool) -> None:
    h = make(tmp_path, native, monkeypatch)
    for step in FAULT_STEPS:
        assert h.registry.get_sample_value("recohop_sampling_faults_total", {"step": step}) == 0.0


@needs_store
@pytest.mark.parametrize("step", ["facts", "decide", "emit", "finish", "select", "publish"])
def test_native_decision_fault_is_counted_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            step: str) -> None:
    h = make(tmp_path, True, monkeypatch)
    requests, expected = workload()
    stage = h.stage
    assert isinstance(stage.store, NativeStore)
    store = stage.store.native
    if step == "facts":
        monkeypatch.setattr(native_store, "Facts", once(native_store.Facts))
    elif step == "decide":
        monkeypatch.setattr(BatchDecider, "decide", once(BatchDecider.decide))
    elif step == "emit":  # the first batch's kept traces fail once in the outbox: none may be sent twice
        monkeypatch.setattr(Outbox, "add_serialized", added_then_once(Outbox.add_serialized))
    elif step == "finish":  # the store itself refuses the decisions (a wrong-length codes buffer)
        calls = [0]

        def bad_finish(codes: bytes) -> Any:
            calls[0] += bool(codes)
            return store.finish(codes[:-1] if calls[0] == 1 and codes else codes)
        stage.store.native = StoreProxy(store, finish=bad_finish)
    elif step == "select":
        stage.store.native = StoreProxy(store, select_due=once(store.select_due, after=3))
    else:
        h.ctx.decisions.subscribe(once(lambda *a: None))
    run_to_end(h, requests)
    counted = faults(h)
    assert counted[step] == 1, counted
    assert sum(counted.values()) == 1, counted
    assert_all_sent_once(h, expected)
    assert store.batch_size() == 0
    if step in ("facts", "decide"):  # the failing batch was decided on_error
        on_error = h.stage.policies.on_error
        assert h.metric("recohop_sampling_decisions_total",
                        {"policy": on_error.policy, "decision": "keep" if on_error.kept else "drop"}) > 0


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_store), False])
def test_intake_fault_refuses_the_request_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              native: bool) -> None:
    h = make(tmp_path, native, monkeypatch)
    requests, expected = workload()
    h.send(requests[0])
    before = (len(h.stage.store.traces), h.stage.store.nbytes, dict(h.stage.store.groups.by_id))
    if native:
        monkeypatch.setattr(NativeStore, "_intern", once(NativeStore._intern, after=1))
        # a second scope in the request, so the failing intern comes after one that succeeded
        requests[1].resource_spans.add().CopyFrom(requests[1].resource_spans[0])
        requests[1].resource_spans[1].resource.attributes.add(key="extra").value.string_value = "x"
        duplicate = requests[1].resource_spans.pop()
    else:
        monkeypatch.setattr(TraceBuffer, "add_spans", once(TraceBuffer.add_spans))
        duplicate = None
    with pytest.raises(Boom):
        h.stage.on_traces(requests[1] if duplicate is None else _with(requests[1], duplicate))
    assert (len(h.stage.store.traces), h.stage.store.nbytes, dict(h.stage.store.groups.by_id)) == before
    assert faults(h)["intake"] == 1
    run_to_end(h, requests[1:])  # the client's retry, and the rest
    assert_all_sent_once(h, expected)


def _with(request: Any, extra: Any) -> Any:
    out = type(request)()
    out.CopyFrom(request)
    out.resource_spans.add().CopyFrom(extra)
    return out


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_store), False])
def test_python_emit_fault_in_relief_does_not_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   native: bool) -> None:
    """Over budget with a trace that cannot be sent: the stage goes on (no endless relief loop)."""
    h = make(tmp_path, native, monkeypatch, max_traces=5)
    requests, expected = workload(count=20)
    if native:  # the native store serializes these traces itself
        monkeypatch.setattr(Outbox, "add_serialized", added_then_once(Outbox.add_serialized))
    else:
        monkeypatch.setattr(Outbox, "add_trace", once(Outbox.add_trace))
    run_to_end(h, requests)
    assert faults(h)["emit"] == 1
    assert_all_sent_once(h, expected)


@needs_store
def test_failed_selection_leaves_no_batch_open() -> None:
    assert STORE is not None
    store = STORE.Store((), (), 100, 16)
    store.add_log(bytes(range(1, 17)), 0, b"x", 9, 0.0)
    store.select_all()
    with pytest.raises(RuntimeError):
        store.select_all()  # the previous batch was not finished
    store.abort()
    assert store.batch_size() == 0
    store.select_all()
    assert store.batch_size() == 1 and store.stats()[0] == 1  # the aborted trace is still there
    store.finish(b"\x00\x00\x00\x00")
    assert store.stats()[0] == 0


def _request_bytes() -> bytes:
    requests, _ = workload(count=3)
    return bytes(requests[0].SerializeToString())


@needs_store
@pytest.mark.parametrize("answer", [-1, -2, 1 << 31, 1 << 40, -(1 << 40), "3", None, 2.0])
def test_bad_intern_results_are_refused_without_state_change(answer: Any) -> None:
    assert STORE is not None
    store = STORE.Store((), (), 100, 16)
    raw = _request_bytes()
    with pytest.raises((ValueError, TypeError, OverflowError)):
        store.intake(raw, 0.0, lambda res, scope: answer)
    assert store.stats() == (0, 0, 0)
    assert store.ids() == []
    assert store.intake(raw, 0.0, lambda res, scope: 0)[5] > 0  # still serving


@needs_store
def test_intern_raising_after_some_scopes_changes_nothing() -> None:
    assert STORE is not None
    store = STORE.Store((), (), 100, 16)
    raw = _request_bytes()
    store.intake(raw, 0.0, lambda res, scope: 0)
    before = store.stats(), store.snapshot(), store.refcount(0)
    calls = [0]

    def intern(res: bytes, scope: bytes) -> int:
        calls[0] += 1
        if calls[0] > 1:
            raise Boom("intern")
        return 2
    with pytest.raises(Boom):
        store.intake(raw + raw, 1.0, intern)  # two ResourceSpans: the second intern raises
    assert (store.stats(), store.snapshot(), store.refcount(0)) == before
    assert store.refcount(1) == 0


@needs_store
@pytest.mark.parametrize("answer", [-1, 1 << 64, 1 << 70, "x", None, 1.5])
def test_bad_classifier_results_mean_unknown(answer: Any) -> None:
    """A classifier answer that is not a uint64 is 'ask the policies in Python' (the top class bit)."""
    assert STORE is not None
    rng = random.Random(1)
    trace = make_trace(rng)
    keys = tuple(sorted({kv.key for span in trace.spans for kv in span.attributes}))
    store = STORE.Store((), tuple((key.encode(), None) for key in keys), 100, 16)
    store.set_classifier(lambda index, kv: answer)
    raw = to_requests(trace.spans, per_request=100)[0].SerializeToString()
    assert store.intake(raw, 0.0, lambda res, scope: 0) is not None
    recs, _, _ = store.select_all()
    classes = np.frombuffer(recs, dtype=native_store.RECORD)["classes"]
    assert int(classes[0]) & UNKNOWN_CLASS
    store.finish(b"\x00\x00\x00\x00")


@needs_store
def test_add_log_bad_gid_changes_nothing() -> None:
    assert STORE is not None
    store = STORE.Store((), (), 100, 16)
    tid = bytes(range(1, 17))
    for gid in (-1, -(1 << 20)):
        with pytest.raises(ValueError):
            store.add_log(tid, gid, b"x", 9, 0.0)
    with pytest.raises(OverflowError):
        store.add_log(tid, 1 << 40, b"x", 9, 0.0)
    assert store.stats() == (0, 0, 0) and store.ids() == []
    assert store.add_log(tid, 0, b"x", 9, 0.0) == -1
    assert store.stats()[0] == 1
