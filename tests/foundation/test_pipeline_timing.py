"""The pipeline's flush timing on a driven clock (`ctx.clock`): when each stage is flushed, where its output
goes, and that one failing flush does not stop the others. No wall-clock sleeps (`processor/pipeline.py`)."""

from __future__ import annotations

from fake_clock import FakeClock
from otlp_peers import wait_until
from prometheus_client import CollectorRegistry

from processor.pipeline import Pipeline
from processor.stages.base import Emitted, Stage, StageContext, TracesRequest


def request(name: str) -> TracesRequest:
    req = TracesRequest()
    req.resource_spans.add().scope_spans.add().spans.add(name=name)
    return req


def names(requests: list) -> list[str]:
    return [s.name for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


class Timed(Stage):
    """Flushed every `interval` s: records when, and sends one request named after itself and the time."""

    def __init__(self, name: str, interval: float | None, fail: bool = False) -> None:
        self.name = name
        self.flush_interval = interval
        self.fail = fail
        self.flushed_at: list[float] = []
        self.seen: list[str] = []  # spans that passed through this stage

    def on_traces(self, req: TracesRequest) -> list[TracesRequest]:
        self.seen += names([req])
        return [req]

    def flush(self, now: float) -> Emitted | None:
        self.flushed_at.append(now)
        if self.fail:
            raise RuntimeError("flush failed")
        return Emitted(traces=[request(f"{self.name}@{now:g}")])

    def shutdown(self) -> Emitted | None:
        return Emitted(traces=[request(f"{self.name}@shutdown")])


class Rig:
    def __init__(self, *stages: Timed) -> None:
        self.clock = FakeClock(start=0.0)
        self.stages = stages
        self.out: list[str] = []
        ctx = StageContext(registry=CollectorRegistry(), clock=self.clock)
        self.pipeline = Pipeline(list(stages), ctx, sink=lambda emitted: self.out.extend(names(emitted.traces)))

    def at(self, t: float) -> Rig:
        self.clock.time = t
        self.pipeline.flush_due()
        return self


def test_each_stage_is_flushed_when_its_interval_has_passed_on_the_clock() -> None:
    fast, slow, never = Timed("fast", 2.0), Timed("slow", 5.0), Timed("never", None)
    rig = Rig(fast, slow, never)
    for t in (1.9, 2.0, 3.9, 4.0, 4.99, 5.0, 6.0):
        rig.at(t)
    assert fast.flushed_at == [2.0, 4.0, 6.0]
    assert slow.flushed_at == [5.0]
    assert never.flushed_at == []


def test_a_late_timer_flushes_once_and_schedules_from_then() -> None:
    """A tick that comes late (a busy machine) does not replay the missed flushes."""
    stage = Timed("s", 2.0)
    rig = Rig(stage).at(9.5)
    assert stage.flushed_at == [9.5]
    rig.at(11.4).at(11.5)
    assert stage.flushed_at == [9.5, 11.5]


def test_flushed_output_goes_through_the_later_stages_only() -> None:
    first, middle, last = Timed("first", None), Timed("middle", 1.0), Timed("last", None)
    rig = Rig(first, middle, last).at(1.0)
    assert rig.out == ["middle@1"]
    assert first.seen == [] and last.seen == ["middle@1"]


def test_a_failing_flush_does_not_stop_the_others_and_stays_scheduled() -> None:
    broken, healthy = Timed("broken", 1.0, fail=True), Timed("healthy", 1.0)
    rig = Rig(broken, healthy).at(1.0).at(2.0)
    assert broken.flushed_at == [1.0, 2.0]
    assert rig.out == ["healthy@1", "healthy@2"]


def test_shutdown_hands_over_what_every_stage_holds_through_the_later_ones() -> None:
    a, b = Timed("a", 1.0), Timed("b", None)
    rig = Rig(a, b)
    rig.pipeline.shutdown()
    assert rig.out == ["a@shutdown", "b@shutdown"]
    assert b.seen == ["a@shutdown"]


def test_the_timer_thread_flushes_on_the_stage_clock() -> None:
    """The background timer asks `ctx.clock`, not the wall clock: moving the driven clock is what flushes."""
    stage = Timed("s", 30.0)
    rig = Rig(stage)
    rig.pipeline.start_timer(tick=0.01)
    try:
        rig.clock.time = 30.0
        wait_until(lambda: stage.flushed_at, "a flush once the clock reached 30 s", timeout=10,
                   seen=lambda: stage.flushed_at)
        assert stage.flushed_at == [30.0]
    finally:
        rig.pipeline.shutdown()
