"""Redaction ahead of the stage's lock (`NativeTraces.redact_ahead` with its spare scanners): the pipeline redacts
a request before it takes the redaction stage's lock, so two requests are redacted at once, each without the GIL.
The bytes sent on and the audit counters must be what the stage gives without it, whatever the threads do."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from receiver_threads import run_as_receivers
from redaction_corpus import pii_values, sentences
from redaction_requests import traces_request
from test_redaction_native import ACTIONS_RULES, KEY, audit, make_stage, needs_native

from bench.workload import generate
from processor.redaction.rules import DEFAULT_RULES

PII = pii_values(seed=23)


@pytest.fixture(autouse=True)
def pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOHOP_PSEUDONYM_KEY", KEY)


def workload() -> list[bytes]:
    """The benchmark's requests and requests full of PII values and sentences (memo misses, every action)."""
    pii = [traces_request([raw for _, raw in PII[i::4]]).SerializeToString() for i in range(4)]
    texts = [traces_request(sentences(PII)[i::3]).SerializeToString() for i in range(3)]
    return [*generate(requests=6, spans_per_request=300, seed=3).requests, *pii, *texts]


@needs_native
@pytest.mark.parametrize("rules", [DEFAULT_RULES, ACTIONS_RULES])
def test_the_same_bytes_and_counters_with_and_without_redacting_ahead(rules: dict) -> None:
    requests = workload()
    plain_registry, ahead_registry = CollectorRegistry(), CollectorRegistry()
    plain, ahead = make_stage(rules, True, plain_registry), make_stage(rules, True, ahead_registry)
    for raw in requests:
        ahead.prepare_trace_bytes(raw)
        assert ahead.on_trace_bytes(raw) == plain.on_trace_bytes(raw)
    assert audit(ahead_registry) == audit(plain_registry)
    assert any(s[2] for s in audit(plain_registry) if s[0] == "recohop_redaction_rule_hits_total")


@needs_native
def test_threads_redacting_ahead_at_once_change_nothing() -> None:
    """Four threads do what receiver threads do (redact ahead without the lock, then count under it), more
    threads than spare scanners: each request comes out as one thread alone makes it, the counts add up."""
    requests = workload() * 3
    plain_registry = CollectorRegistry()
    plain = make_stage(ACTIONS_RULES, True, plain_registry)
    expected = {i: plain.on_trace_bytes(raw) for i, raw in enumerate(requests)}

    registry = CollectorRegistry()
    stage = make_stage(ACTIONS_RULES, True, registry)
    got: dict[int, list[bytes]] = {}
    run_as_receivers(stage, requests, got.__setitem__)  # more threads than spare scanners
    assert got == expected
    assert audit(registry) == audit(plain_registry)


@needs_native
def test_no_spare_scanner_free_means_the_stage_redacts_under_its_lock() -> None:
    stage = make_stage(ACTIONS_RULES, True)
    plain = make_stage(ACTIONS_RULES, True)
    native = stage.native
    assert native is not None
    held = [native._spare.get_nowait() for _ in range(native.AHEAD)]  # every spare busy elsewhere
    raw = traces_request([raw for _, raw in PII[:20]]).SerializeToString()
    stage.prepare_trace_bytes(raw)
    assert getattr(native._ahead, "found", None) is None
    assert stage.on_trace_bytes(raw) == plain.on_trace_bytes(raw) != [raw]
    for scanner in held:
        native._spare.put(scanner)
    other = traces_request([raw for _, raw in PII[20:30]]).SerializeToString()
    stage.prepare_trace_bytes(other)  # a read ahead of other bytes is not used for these
    assert stage.on_trace_bytes(raw) == plain.on_trace_bytes(raw)
    assert stage.on_trace_bytes(other) == plain.on_trace_bytes(other)
