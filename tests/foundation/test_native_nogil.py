"""`_nogil.run_jobs` (processor/native/_nogil.c) and the pipeline's job runs (`Stage.prepare_job`): span metrics'
walk and the trace store's parse of a request run back to back in one release of the GIL. What the stages derive,
decide and send must be what they do with their own walks ahead, and a job that fails or never runs costs only
itself: its stage walks again under its lock."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
from fake_clock import FakeClock
from prometheus_client import CollectorRegistry
from receiver_threads import on_threads

from bench.workload import TraceIdRewriter, generate
from processor import pipeline as pipeline_module
from processor.config_node import Node
from processor.native import load
from processor.pipeline import Pipeline, job_runs
from processor.sampling.buffer import Late
from processor.stages import spanmetrics, tail_sampling
from processor.stages.base import Emitted, Stage, StageContext

NOGIL, STORE, SCAN = load("nogil"), load("tracestore"), load("spanscan")
needs_native = pytest.mark.skipif(NOGIL is None or STORE is None or SCAN is None, reason="native modules not built")


def requests(n: int = 16, spans: int = 300) -> list[bytes]:
    return generate(requests=n, spans_per_request=spans, seed=11, special_rate=0.2, click_rate=0.2).requests


class Run:
    """Span metrics then tail sampling in a pipeline, as the hop builds them (exemplars off: which span becomes
    one depends on arrival order, and the threaded test compares against one thread)."""

    def __init__(self, jobs: bool) -> None:
        self.clock = FakeClock()
        ctx = StageContext(registry=CollectorRegistry(), clock=self.clock)
        self.decisions: list[tuple[bytes, bool, str]] = []
        ctx.decisions.subscribe(lambda tid, kept, policy: self.decisions.append((tid, kept, policy)))
        self.metrics = spanmetrics.build(Node({"exemplars": {"enabled": False}}, "<test>"), ctx)
        self.tail = tail_sampling.build(Node({}, "<test>"), ctx)
        self.sent: list[bytes] = []
        self.pipeline = Pipeline([self.metrics, self.tail], ctx, sink=self._sink)
        if not jobs:
            self.pipeline._job_runs = [None, None]  # each stage's own walk ahead (`prepare_trace_bytes`)

    def _sink(self, emitted: Emitted) -> None:
        self.sent.extend(bytes(t) for t in emitted.traces)  # type: ignore[arg-type]

    def send(self, raw: bytes) -> None:
        out, rejections = self.pipeline.process(Emitted(traces=[raw]))
        assert rejections.count == 0
        self._sink(out)

    def finish(self) -> None:
        self.clock.advance(60.0)
        self.pipeline.flush_due()
        self.pipeline.shutdown()

    def counts(self) -> list[tuple[Any, ...]]:
        return sorted((m.name, sorted(p.labels.items()), p.buckets, round(p.value, 6))
                      for m in self.metrics.deriver.snapshot() for p in m.points)


class Recorder:
    """`_nogil` as the pipeline sees it, keeping every batch of jobs it ran."""

    def __init__(self) -> None:
        self.batches: list[tuple[Any, ...]] = []

    def run_jobs(self, jobs: tuple[Any, ...]) -> int:
        self.batches.append(jobs)
        return NOGIL.run_jobs(jobs)  # type: ignore[union-attr, no-any-return]


@needs_native
def test_the_pipeline_runs_both_walks_as_one_job_run_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(pipeline_module, "_nogil", recorder)
    work = requests()
    runs = {}
    for jobs in (True, False):
        run = runs[jobs] = Run(jobs)
        for raw in work:
            run.send(raw)
            run.clock.advance(0.5)
            run.pipeline.flush_due()
        run.finish()
    assert runs[True].pipeline._job_runs == [(0, 1), ()]
    # one run per request, each a span-metrics walk and a trace-store parse, both used by their stage's call
    assert len(recorder.batches) == len(work)
    assert all([job.state for job in batch] == ["taken", "used"] for batch in recorder.batches)
    assert runs[True].decisions == runs[False].decisions and any(k for _, k, _ in runs[True].decisions)
    assert runs[True].sent == runs[False].sent and runs[True].sent
    assert runs[True].counts() == runs[False].counts() and runs[True].counts()


@needs_native
def test_four_receiver_threads_with_job_runs_decide_and_count_what_one_thread_does() -> None:
    work = requests(n=24, spans=200)
    sequential = Run(jobs=False)
    for raw in work:
        sequential.send(raw)
    sequential.finish()

    threaded = Run(jobs=True)
    on_threads(work, threaded.send)
    threaded.finish()
    assert sorted(threaded.decisions) == sorted(sequential.decisions)
    assert threaded.counts() == sequential.counts()


def intake(store: Any, raw: bytes, job: Any = None) -> tuple[Any, ...]:
    """The native store's intake of `raw` (with a parse job, when given), as comparable values."""
    late = Late()
    if job is not None:
        store._ahead.hold(raw, job)
    full = store.intake_spans(raw, 0.0, late)
    return full, store.stats()


@needs_native
def test_a_failing_job_stops_the_run_and_the_jobs_it_left_are_parsed_again_by_their_stage() -> None:
    [raw] = requests(n=1)
    used, plain = Run(jobs=True), Run(jobs=True)

    def refuses(name: bytes) -> tuple[int, ...]:
        raise RuntimeError("resolve refused")

    intake_ = used.metrics.deriver.native
    failing = SCAN.walk_job(raw, intake_.attr_keys, intake_.res_keys, intake_.specs, SCAN.Names(16), refuses)
    pending = used.tail.store.prepare_job(raw)
    with pytest.raises(RuntimeError, match="resolve refused"):
        NOGIL.run_jobs((failing, pending))
    assert (failing.state, pending.state) == ("failed", "pending")
    # the parse job never ran: the intake reads the request itself, to the same result
    assert intake(used.tail.store, raw) == intake(plain.tail.store, raw)
    assert pending.state == "pending"
    # a failed walk is not used by scan either: the stage walks, with its own resolve
    intake_._ahead.hold(raw, failing)
    assert intake_.consume(raw) and failing.state == "failed"


@needs_native
def test_a_job_that_ran_for_other_bytes_or_never_ran_is_not_used() -> None:
    first, second = requests(n=2)
    run, plain = Run(jobs=True), Run(jobs=True)
    store = run.tail.store
    other = store.prepare_job(second)
    assert NOGIL.run_jobs((other,)) == 1 and other.state == "parsed"
    assert intake(store, first, other) == intake(plain.tail.store, first)  # parsed for `second`: not used
    assert other.state == "parsed"
    never = store.prepare_job(second)
    assert intake(store, second, never) == intake(plain.tail.store, second)
    assert never.state == "pending"
    ran = store.prepare_job(second)
    NOGIL.run_jobs((ran,))
    assert intake(store, second, ran)[1] == store.stats() and ran.state == "used"


@needs_native
def test_the_classifier_stays_while_a_parse_job_waits() -> None:
    [raw] = requests(n=1)
    native = Run(jobs=True).tail.store.native
    job = native.parse_job(raw)
    with pytest.raises(RuntimeError):
        native.set_classifier(None)  # a waiting job will read the classifier without the GIL
    NOGIL.run_jobs((job,))
    native.set_classifier(None)
    job = native.parse_job(raw)
    del job  # dropped without running: no longer counted
    gc.collect()
    native.set_classifier(None)


@needs_native
def test_run_jobs_refuses_what_is_not_a_tuple_of_jobs() -> None:
    [raw] = requests(n=1)
    job = Run(jobs=True).tail.store.prepare_job(raw)
    with pytest.raises(TypeError):
        NOGIL.run_jobs([job])
    with pytest.raises(TypeError, match="not a native job"):
        NOGIL.run_jobs((job, object()))
    with pytest.raises(ValueError):
        NOGIL.run_jobs((job,) * 17)
    assert NOGIL.run_jobs(()) == 0


class Walks(Stage):
    takes_trace_bytes = True

    def __init__(self, mutates: bool) -> None:
        self.mutates = mutates

    def prepare_job(self, raw: bytes) -> object | None:
        return None


def test_job_runs_group_stages_that_see_the_same_bytes() -> None:
    plain = Stage()
    plain.takes_trace_bytes = True
    stages = [Walks(mutates=True), Walks(mutates=False), Walks(mutates=False), plain, Walks(mutates=False)]
    # the first mutates: the second gets other bytes, so it starts a run; the fourth has no job
    assert job_runs(stages) == [None, (1, 2), (), None, None]
    assert job_runs([Walks(mutates=False), Walks(mutates=True), Walks(mutates=False)]) == [(0, 1), (), None]


@needs_native
def test_a_request_its_job_buffered_plainly_passes_the_tail_stage_while_a_flush_holds_its_lock() -> None:
    [first] = requests(n=1)
    replay = TraceIdRewriter(first)
    second, third = replay.replay(1), replay.replay(2)  # the same groups, new traces
    run = Run(jobs=True)
    run.send(first)  # new groups: the tail stage's intake asks Python for them, under its lock
    tail_lock = run.pipeline._locks[1]
    done = threading.Event()
    failures: list[BaseException] = []

    def receiver() -> None:
        try:
            run.send(second)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)
        done.set()

    with tail_lock:  # as a flush deciding a batch holds it
        before = run.tail.store.stats()[2]
        thread = threading.Thread(target=receiver)
        thread.start()
        assert done.wait(timeout=30.0), "the request waited for the tail stage's lock"
        assert run.tail.store.stats()[2] > before  # buffered, by its job
    thread.join()
    assert not failures
    run.send(third)
    run.finish()
    plain = Run(jobs=False)
    for raw in (first, second, third):
        plain.send(raw)
    plain.finish()
    assert run.decisions == plain.decisions and run.sent == plain.sent
