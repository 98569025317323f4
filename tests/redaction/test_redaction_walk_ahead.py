"""The redaction scanner's walk done ahead (`NativeTraces.prepare`, `RedactionStage.prepare_trace_bytes`): the
pipeline walks a request before it takes the stage's lock, on several receiver threads at once. The scanner
lets one walk at a time at its memo tables (its own lock, waited for without the GIL). The requests out and the
audit counts must be what they are without the walk ahead, whatever the threads do."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry
from receiver_threads import run_as_receivers
from redaction_corpus import ORDINARY
from redaction_requests import traces_request
from test_redaction_native import (
    ACTIONS_RULES,
    NATIVE,
    TEXTS,
    audit,
    make_stage,
    needs_native,
    pseudonym_key,
)

from bench.workload import generate
from processor.redaction.native import NativeTraces
from processor.redaction.rules import DEFAULT_RULES

__all__ = ["pseudonym_key"]  # the autouse fixture, shared with test_redaction_native


def workload() -> list[bytes]:
    """Benchmark requests and requests with PII in every place, several user ids each."""
    bench = generate(requests=12, spans_per_request=300, seed=5).requests
    pii = [traces_request(TEXTS[i:] + ORDINARY, user_ids=[f"u-{i}", f"u-{i + 1}"]).SerializeToString()
           for i in range(0, 12, 2)]
    return [r for pair in zip(bench, pii + bench[len(pii):], strict=True) for r in pair]


def stage_with(rules: dict, memo_max: int | None) -> tuple[Any, CollectorRegistry]:
    registry = CollectorRegistry()
    stage = make_stage(rules, True, registry=registry)
    if memo_max is not None:  # tiny memos: misses (Python, with the GIL) while other threads wait for the walk
        stage.native = NativeTraces(stage.redactor, NATIVE, memo_max=memo_max)
    return stage, registry


@needs_native
@pytest.mark.parametrize("memo_max", [None, 3], ids=["memo", "tiny-memo"])
@pytest.mark.parametrize("rules", [DEFAULT_RULES, ACTIONS_RULES], ids=["default", "actions"])
def test_four_threads_walking_ahead_give_the_same_requests_and_audit(rules: dict, memo_max: int | None) -> None:
    work = workload()
    sequential, sequential_registry = stage_with(rules, memo_max)
    expected = [sequential.on_trace_bytes(raw) for raw in work]

    stage, registry = stage_with(rules, memo_max)
    got: dict[int, list[bytes]] = {}

    def passed_on(i: int, out: list[bytes]) -> None:
        got[i] = out

    run_as_receivers(stage, work, passed_on, threads=4)
    assert [got[i] for i in range(len(work))] == expected
    assert audit(registry) == audit(sequential_registry)
    assert any(value for name, _, value in audit(registry) if name.endswith("rule_hits_total"))


@needs_native
def test_a_walk_ahead_is_used_once_and_only_with_its_own_bytes() -> None:
    raw = generate(requests=1, spans_per_request=200, seed=2).requests[0]
    once, once_registry = stage_with(DEFAULT_RULES, None)
    (expected,) = once.on_trace_bytes(raw)
    per_call = audit(once_registry)

    stage, registry = stage_with(DEFAULT_RULES, None)
    stage.prepare_trace_bytes(raw)
    assert stage.on_trace_bytes(raw) == [expected]
    assert audit(registry) == per_call  # the walk ahead counted once
    assert stage.on_trace_bytes(raw) == [expected]  # used up: walked again, counted again
    stage.prepare_trace_bytes(raw)
    assert stage.on_trace_bytes(bytes(bytearray(raw))) == [expected]  # equal bytes, another object: walked
    assert stage.on_trace_bytes(raw) == [expected]  # the walk ahead of other bytes is gone too
    assert audit(registry) == [(name, labels, value * 4) for name, labels, value in per_call]


@needs_native
def test_bytes_the_walk_ahead_gives_up_on_are_refused_by_the_stage() -> None:
    stage, _ = stage_with(DEFAULT_RULES, None)
    stage.prepare_trace_bytes(b"\x0a\x03\x0a")  # truncated: the scanner gives up, the stage parses (and refuses)
    with pytest.raises(DecodeError):
        stage.on_trace_bytes(b"\x0a\x03\x0a")


@needs_native
def test_a_callback_may_not_walk_or_clear_the_scanner_it_serves() -> None:
    """While a walk runs, its scanner's memo tables are its own: a callback (Python, on the walking thread)
    calling redact() again would wait for itself, and clear() would free what the walk reads."""
    seen: list[str] = []
    scanner: Any = None

    def key_action(key: bytes) -> tuple[int, int, object]:
        for call in (lambda: scanner.redact(raw), scanner.clear, scanner.memo_sizes):
            try:
                call()
            except RuntimeError as exc:
                seen.append(str(exc))
        return 0, 0, None  # A_CLEAN

    scanner = NATIVE.Scanner(key_action, lambda raw: None, lambda raw: None, 0, False, None, None, 0, 1, 16)
    raw = traces_request(ORDINARY).SerializeToString()
    assert scanner.redact(raw) is not None
    assert seen and all(("reentrant" in s) or ("during redact" in s) for s in seen), seen
    assert {"reentrant" in s for s in seen} == {True, False}  # both kinds of refusal were met
