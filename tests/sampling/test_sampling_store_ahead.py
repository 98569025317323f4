"""Intake's first pass done ahead (`NativeStore.prepare`, `_tracestore.Store.parse`): the pipeline reads a request's
spans before it takes the tail-sampling stage's lock, without the GIL, on several receiver threads at once. What
the stage then keeps, drops and sends must be what it does without the read ahead, whatever the threads do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from receiver_threads import run_as_receivers
from sampling_helpers import Harness
from test_sampling_store import ALL_KINDS, harness, needs_store, policy_file

from bench.sampling_workload import all_spans, make_traces, to_requests
from processor.native import load

STORE = load("tracestore")
# Every kind whose decision depends on the trace alone (rate_limit depends on arrival order, so threads would
# change it): regex and numeric attribute policies make the store call its Python classifier from the parse.
ORDER_FREE_KINDS = "\n".join(line for line in ALL_KINDS.splitlines() if "rate_limit" not in line)


def workload(traces: int = 1200, per_request: int = 200) -> list[bytes]:
    return [r.SerializeToString() for r in to_requests(all_spans(make_traces(5, traces)), per_request=per_request)]


def sent(h: Harness) -> list[bytes]:
    return [r if isinstance(r, bytes) else r.SerializeToString() for r in h.traces]


def run(h: Harness, requests: list[bytes], ahead: bool) -> list[tuple[bytes, bool, str]]:
    stage = h.stage
    for raw in requests:
        if ahead:
            stage.prepare_trace_bytes(raw)
        h.traces.extend(stage.on_trace_bytes(raw))
        h.clock.now += 0.05
    h.advance(5.0)
    h.shutdown()
    return sorted(h.decisions)


@needs_store
@pytest.mark.parametrize("text", [ALL_KINDS, None])
def test_the_same_decisions_and_bytes_with_and_without_the_read_ahead(
        text: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = policy_file(tmp_path, text) if text else None
    config: dict[str, Any] = {"max_bytes": 60_000}  # budget binding too: early decisions on the same data
    requests = workload()
    plain = harness(True, policies, monkeypatch, **config) if policies else Harness(**config)
    read_ahead = harness(True, policies, monkeypatch, **config) if policies else Harness(**config)
    assert run(read_ahead, requests, ahead=True) == run(plain, requests, ahead=False)
    assert sent(read_ahead) == sent(plain) and plain.traces
    assert sum(kept for _, kept, _ in plain.decisions) > 10


@needs_store
def test_threads_reading_ahead_while_the_stage_works_change_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Four threads do what receiver threads do (parse ahead, then take the stage's lock for the intake) while
    the main thread flushes the stage; the decisions equal one thread's without the read ahead."""
    policies = policy_file(tmp_path, ORDER_FREE_KINDS)
    requests = workload(traces=2000, per_request=100)
    sequential = harness(True, policies, monkeypatch)
    expected = run(sequential, requests, ahead=False)

    h = harness(True, policies, monkeypatch)
    stage = h.stage
    assert stage.store.layout.classifies  # the parse calls the Python classifier, taking the GIL back

    def timer() -> None:  # the flush timer's calls meanwhile (the clock stands: nothing is due)
        with stage.lock:
            assert not stage.flush(h.clock.now)

    run_as_receivers(stage, requests, lambda _i, out: h.traces.extend(out), meanwhile=timer)
    h.advance(15.0)
    h.shutdown()
    assert sorted(h.decisions) == expected
    assert len(h.stage.store.traces) == 0


@needs_store
def test_a_read_ahead_is_used_once_and_only_for_its_own_bytes_and_store() -> None:
    assert STORE is not None
    raw = workload(traces=30, per_request=400)[0]

    def store() -> Any:
        return STORE.Store((b"reco.generate",), ((b"reco.fallback", None),), 100, 1000)

    def intern(res: bytes, scope: bytes) -> int:
        return 0

    reference = store().intake(raw, 1.0, intern)
    a, b = store(), store()
    ahead = a.parse(raw)
    assert b.intake(raw, 1.0, intern, ahead) == reference  # another store's read ahead: ignored, read here
    copy = bytes(bytearray(raw))
    assert a.intake(copy, 1.0, intern, ahead)[5] == reference[5]  # equal bytes, another object: read here
    fresh = store()
    ahead = fresh.parse(raw)
    assert fresh.intake(raw, 1.0, intern, ahead) == reference
    again = fresh.intake(raw, 2.0, intern, ahead)  # used up: read again, and now every span is a repeat
    assert again is not None and again[5] == reference[5]
    assert store().parse(b"\x0a\x05garbage") is not None
    garbage = b"\x0a\x05garbage"
    s = store()
    assert s.intake(garbage, 1.0, intern, s.parse(garbage)) is None  # not readable: as without the read ahead
    with pytest.raises(TypeError):
        s.parse(bytearray(raw))


@needs_store
def test_a_read_ahead_that_fails_leaves_the_intake_to_fail_in_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    store = h.stage.store
    raw = workload(traces=30, per_request=400)[0]

    class Failing:
        def parse(self, data: bytes) -> None:
            raise MemoryError

        def __getattr__(self, name: str) -> Any:
            return getattr(native, name)

    native = store.native
    monkeypatch.setattr(store, "native", Failing())
    h.stage.prepare_trace_bytes(raw)  # nothing raised here: the stage's own call reads the request
    monkeypatch.setattr(store, "native", native)
    assert h.stage.on_trace_bytes(raw) == [] and store.stats()[0] == 30



@needs_store
def test_the_classifier_is_not_swapped_under_a_running_parse() -> None:
    """`set_classifier` frees the memo a parse without the GIL reads: refused while one runs."""
    assert STORE is not None
    store = STORE.Store((), ((b"reco.placement", None),), 100, 1000)
    raw = workload(traces=30, per_request=400)[0]
    refused: list[str] = []

    def classify(index: int, kv: bytes) -> int:  # called from inside the parse, with the GIL taken back
        try:
            store.set_classifier(None)
        except RuntimeError as exc:
            refused.append(str(exc))
        return 1

    store.set_classifier(classify)
    ahead = store.parse(raw)
    assert refused and "parse" in refused[0]
    assert store.intake(raw, 1.0, lambda res, scope: 0, ahead) is not None
    store.set_classifier(None)  # no parse running: allowed
    with pytest.raises(RuntimeError):
        STORE.Store.__new__(STORE.Store).set_classifier(None)  # never initialised
