"""The span-metrics scanner's walk done ahead (`NativeIntake.walk`, `_spanscan.walk`): the pipeline walks a request
before it takes the stage's lock, without the GIL, on several receiver threads at once; the stage then only
applies the groups. The derived metrics must be what they are without the walk ahead, whatever the threads do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from receiver_threads import run_as_receivers
from spanmetrics_helpers import build
from test_spanmetrics_native import assert_same, extra_rules, feed, make_stage, needs_native, state

from bench.workload import generate
from processor.stages.base import StageContext

__all__ = ["extra_rules"]  # the module fixture, shared with test_spanmetrics_native


def requests(n: int = 12, spans: int = 400) -> list[bytes]:
    return generate(requests=n, spans_per_request=spans, seed=9, special_rate=0.2, click_rate=0.2).requests


class WalkingAhead:
    """The stage as the pipeline calls it: `prepare_trace_bytes` first, then `on_trace_bytes` (same bytes)."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        self.stage.prepare_trace_bytes(raw)
        return self.stage.on_trace_bytes(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stage, name)


@needs_native
def test_the_same_metrics_and_exemplars_with_and_without_the_walk_ahead(extra_rules: Path) -> None:
    work = requests()
    results = []
    for ahead in (True, False):
        clock = [0.0]
        stage, ctx = make_stage(True, extra_rules, clock)
        feed(WalkingAhead(stage) if ahead else stage, ctx, work, clock, decide=True)
        results.append(state(stage, ctx))
    assert_same(*results)
    assert any(e for _, _, _, e in results[0]["exact"]), "kept traces must have produced exemplars"


def counts(stage: Any) -> list[tuple[Any, ...]]:
    """Every series and its bucket counts (what does not depend on the order requests came in)."""
    return sorted((m.name, sorted(p.labels.items()), p.buckets, round(p.value, 6))
                  for m in stage.deriver.snapshot() for p in m.points)


@needs_native
def test_threads_walking_ahead_while_others_apply_change_nothing() -> None:
    """Four threads do what receiver threads do (walk without the lock, apply under it); the series and counts
    equal one thread's without the walk ahead (exemplars off: which span becomes one depends on the order)."""
    work = requests(n=24, spans=300)
    config = {"exemplars": {"enabled": False}}
    sequential, _ = build("spanmetrics", config, ctx=StageContext(registry=CollectorRegistry()))
    for raw in work:
        sequential.on_trace_bytes(raw)

    stage, _ = build("spanmetrics", config, ctx=StageContext(registry=CollectorRegistry()))

    def passed_on(i: int, out: list[bytes]) -> None:
        assert out == [work[i]]

    run_as_receivers(stage, work, passed_on)
    assert counts(stage) == counts(sequential) and counts(stage)


def native_intake(extra_rules: Path) -> tuple[Any, Any, bytes]:
    """A native stage's intake, its scanner module and one request."""
    stage, _ = make_stage(True, extra_rules, [0.0])
    native = stage.deriver.native
    return native, native.module, requests(n=1)[0]


@needs_native
def test_a_walk_is_used_once_and_only_with_its_own_bytes_keys_and_rules(extra_rules: Path) -> None:
    native, module, raw = native_intake(extra_rules)
    args = (native.attr_keys, native.res_keys, native.specs, native.names, native._resolve)

    def scan(data: bytes, walked: Any = None) -> Any:
        targets = tuple(r.target(native.reservoir) for r in native.rules)
        return module.scan(data, *args, targets, walked)

    reference = scan(raw)
    assert any(reference)  # the first request: keys to resolve and candidates to offer
    walked = module.walk(raw, *args)
    assert scan(raw, walked) == reference
    assert scan(raw, walked) == reference  # used up: walked again, the same groups and candidates
    other = module.walk(raw, native.attr_keys, native.res_keys, tuple(list(native.specs)), native.names,
                        native._resolve)
    assert scan(raw, other) == reference  # equal rules in another object: not trusted, walked again
    copy = bytes(bytearray(raw))
    assert scan(copy, module.walk(raw, *args)) == reference  # equal bytes, another object
    assert module.walk(b"\x0a\x02\x12", *args) is not None  # not readable: the scan then says None
    assert scan(b"\x0a\x02\x12", module.walk(b"\x0a\x02\x12", *args)) is None


@needs_native
def test_span_names_are_resolved_once_across_calls_and_threads(extra_rules: Path) -> None:
    """A name's rules are kept in C (`Names`) across walks, so a request of known names needs the GIL for none
    of them; resolve is asked once per name, whatever thread walks."""
    stage, _ = make_stage(True, extra_rules, [0.0])
    native = stage.deriver.native
    asked: list[bytes] = []
    resolve = native._resolve

    def counting(name: bytes) -> Any:
        asked.append(name)
        return resolve(name)

    native._resolve = counting
    work = requests(n=8)
    run_as_receivers(stage, work, lambda i, out: None, threads=4)
    distinct = set(asked)
    assert distinct and native.names.count() == len(distinct)
    assert len(asked) <= len(distinct) * 4  # at most one ask per name and thread that met it first at once
    asked.clear()
    for raw in work:
        stage.prepare_trace_bytes(raw)
        with stage.lock:
            stage.on_trace_bytes(raw)
    assert asked == []


@needs_native
def test_names_are_bounded_and_tied_to_their_rules(extra_rules: Path) -> None:
    native, module, raw = native_intake(extra_rules)
    targets = tuple(r.target(native.reservoir) for r in native.rules)
    reference = module.scan(raw, native.attr_keys, native.res_keys, native.specs, native.names, native._resolve,
                            targets)
    one = module.Names(1)  # one name kept; the others are resolved on every call, with the same result
    for _ in range(2):
        got = module.scan(raw, native.attr_keys, native.res_keys, native.specs, one, native._resolve, targets)
        assert got == reference and one.count() == 1
    # names resolved for these rules, given with fewer rules: refused, never read out of range
    assert max(max(native._resolve(n.encode()) or (0,)) for n in ("reco.generate", "scoring")) >= 1
    with pytest.raises(ValueError, match="out of range"):
        module.walk(raw, native.attr_keys, native.res_keys, native.specs[:1], native.names, native._resolve)
    with pytest.raises(ValueError):
        module.Names(0)
