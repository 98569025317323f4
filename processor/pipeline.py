"""Builds the stages from config and runs requests through them, in order, each stage under its own lock.

The span's whole path reads top to bottom here: receiver -> `Pipeline.process` -> each stage -> exporter.
Timer flushes from stage i continue through stages i+1..n, so e.g. traces released by tail sampling still
pass any stage configured after it.

Why a lock per stage and not one for the pipeline: the hop is one process with one GIL on a 2-core machine.
The stages' C walks release the GIL; with one lock around the pipeline the second core would still idle,
because no other request could enter any stage meanwhile. With a lock per stage, request A's walk in one stage
overlaps request B in another. A stage still sees one call at a time (it owns its state, as before).
Why walks ahead of the lock (`Stage.prepare_trace_bytes`): a thread that released the GIL for a walk must wait to
take it back (up to the switch interval while others run Python); under a stage's lock that wait stalls every
request queued on the lock, so the stages do their long walks before taking it and only apply them under it.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter

from processor.config_node import ConfigError, Node
from processor.native import load as load_native
from processor.stages.base import (
    Emitted,
    Rejections,
    Stage,
    StageContext,
    TracesRequest,
    as_trace_bytes,
    as_trace_message,
)

_nogil = load_native("nogil")  # run_jobs: stages' native walks in one GIL release (`Stage.prepare_job`)

# Stage kind -> "module:function"; the function is `build(node, ctx) -> Stage`.
STAGE_KINDS: dict[str, str] = {
    "redaction": "processor.stages.redaction:build",
    "spanmetrics": "processor.stages.spanmetrics:build",
    "tail_sampling": "processor.stages.tail_sampling:build",
    "cardinality": "processor.stages.cardinality:build",
    "passthrough": "processor.pipeline:build_passthrough",
    "record": "processor.stages.record:build",
    "limits": "processor.stages.limits:build",
}


def build_passthrough(node: Node, ctx: StageContext) -> Stage:
    """A stage that changes nothing: useful to measure the cost of the stage machinery."""
    stage = Stage()
    stage.name = "passthrough"
    stage.mutates = False
    return stage


def build_stage(node: Node, ctx: StageContext) -> Stage:
    kind = node.str("type", choices=tuple(sorted(STAGE_KINDS)))
    module_name, func_name = STAGE_KINDS[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise node.error("type", f"a stage kind available in this build ({kind} is not installed: {exc})") from None
    stage: Stage = getattr(module, func_name)(node, ctx)
    node.done()
    return stage


def reads_traces(stage: Stage) -> bool:
    """False for stages that leave traces alone: they are skipped (no conversion between bytes and messages)."""
    return stage.takes_trace_bytes or type(stage).on_traces is not Stage.on_traces or "on_traces" in vars(stage)


def _trace_stage(stage: Stage, traces: list[TracesRequest | bytes], spans: list[int | None],
                 ) -> tuple[list[TracesRequest | bytes], list[int | None]]:
    """One stage over the traces requests, with each request's span count carried to what it returned."""
    out: list[TracesRequest | bytes] = []
    counts: list[int | None] = []
    keeps = stage.keeps_span_count
    for req, n in zip(traces, spans, strict=True):
        given = as_trace_bytes(req) if stage.takes_trace_bytes else as_trace_message(req)
        produced = stage.on_trace_bytes(given) if stage.takes_trace_bytes else stage.on_traces(given)  # type: ignore[arg-type]
        out.extend(produced)
        if len(produced) == 1 and (produced[0] is given or keeps):
            counts.append(n)
        else:
            counts.extend([None] * len(produced))
    return out, counts


Sink = Callable[[Emitted], None]


class Gate:
    """Requests pass concurrently; a reload or shutdown closes the gate, which waits for the requests inside
    to leave and keeps new ones waiting until it opens again (the stages are never swapped under a request)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextmanager
    def passage(self) -> Iterator[None]:
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                if not self._inside:
                    self._cond.notify_all()

    def close(self) -> None:
        """Blocks until no request is inside; later ones wait for `open`."""
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._closed = True
            while self._inside:
                self._cond.wait()

    def open(self) -> None:
        with self._cond:
            self._closed = False
            self._cond.notify_all()

    @contextmanager
    def closed(self) -> Iterator[None]:
        self.close()
        try:
            yield
        finally:
            self.open()


class Pipeline:
    """Owns the stages; every call into a stage happens under that stage's `lock`, inside `self.gate`."""

    def __init__(self, stages: list[Stage], ctx: StageContext, sink: Sink) -> None:
        self.sink = sink
        self.gate = Gate()
        self._flush_lock = threading.Lock()  # one flush at a time (taken inside the gate)
        self._timer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._install(stages, ctx)

    def _install(self, stages: list[Stage], ctx: StageContext) -> None:
        self.stages = stages
        self.ctx = ctx
        # True when no stage changes data: the receiver may forward the bytes it got.
        self.forwards_unchanged = all(not s.mutates for s in stages)
        # True when the first stage that reads traces wants them serialized: the receiver then hands over the
        # bytes it received (a request it parsed only to validate it).
        first = [s for s in stages if reads_traces(s)]
        self.traces_as_bytes = not first or first[0].takes_trace_bytes
        # The first trace stage's admission (`Stage.admit_trace_bytes`), when it has one: the receiver then
        # asks it instead of parsing each traces request.
        self.admit_trace_bytes: Callable[[bytes], int | None] | None = None
        if first and first[0].takes_trace_bytes and \
                type(first[0]).admit_trace_bytes is not Stage.admit_trace_bytes:
            self.admit_trace_bytes = first[0].admit_trace_bytes
        self._locks = [s.lock for s in stages]
        # Stages with work to do on a request before their lock is taken (`Stage.prepare_trace_bytes`).
        self._prepares = [s.takes_trace_bytes and type(s).prepare_trace_bytes is not Stage.prepare_trace_bytes
                          for s in stages]
        self._job_runs = job_runs(stages) if _nogil is not None else [None] * len(stages)
        self._stage_seconds = Counter(
            "recohop_stage_seconds", "Time spent in each stage: its calls under its lock and its work ahead of the lock",
            ["stage"], registry=ctx.registry)
        self._stage_timers = [self._stage_seconds.labels(s.name) for s in stages]
        self._next_flush = [
            (ctx.clock() + s.flush_interval) if s.flush_interval else None for s in stages]

    def replace(self, build: Callable[[], tuple[list[Stage], StageContext]]) -> None:
        """Swap in new stages (a config reload): the old ones hand over everything they hold first (buffered
        traces are decided, as at shutdown), so nothing is lost; requests wait on the lock meanwhile. When
        `build` fails the old stages are gone already, so the caller must be able to build them again."""
        with self.gate.closed():
            self._hand_over()
            self._install(*build())
        if self._timer is None:
            self.start_timer()

    def process(self, batch: Emitted) -> tuple[Emitted, Rejections]:
        """Run one received batch through every stage; returns what goes on and what the stages refused of
        it (partial success). Raises Backpressure or Rejected from a stage."""
        with self.gate.passage():
            rejections = self.ctx.rejections = Rejections()
            return self._through(0, batch), rejections

    def _through(self, start: int, batch: Emitted) -> Emitted:
        traces, metrics, logs = batch.traces, batch.metrics, batch.logs
        spans = batch.span_counts()
        jobs: dict[int, object] = {}  # the jobs of the current run, by stage, for the bytes `jobs_for`
        jobs_for: bytes | None = None
        for i in range(start, len(self.stages)):
            stage = self.stages[i]
            ahead = 0.0
            run = self._job_runs[i]
            if (run or (run is None and self._prepares[i])) and len(traces) == 1 and isinstance(traces[0], bytes):
                began = time.perf_counter()
                if run:  # this stage's and the next ones' walks, in one release of the GIL
                    jobs, jobs_for = self._run_jobs(run, traces[0]), traces[0]
                else:
                    stage.prepare_trace_bytes(traces[0])  # outside the lock: a walk without the GIL overlaps others
                ahead = time.perf_counter() - began
            job = jobs.get(i)
            if job is not None and not metrics and not logs and len(traces) == 1 and traces[0] is jobs_for:
                began = time.perf_counter() - ahead
                done = stage.job_done(jobs_for, job)
                if done is not None:  # the job did this stage's work: its lock is not taken
                    self._stage_timers[i].inc(time.perf_counter() - began)
                    traces, spans = list(done), [None] * len(done)
                    continue
            with self._locks[i]:
                began = time.perf_counter() - ahead
                if traces and reads_traces(stage):
                    traces, spans = _trace_stage(stage, traces, spans)
                if metrics:
                    metrics = [out for req in metrics for out in stage.on_metrics(req)]
                if logs:
                    logs = [out for req in logs for out in stage.on_logs(req)]
                self._stage_timers[i].inc(time.perf_counter() - began)
        return Emitted(traces, metrics, logs, spans)

    def _run_jobs(self, run: tuple[int, ...], raw: bytes) -> dict[int, object]:
        """The prepare work of stages `run` (`Stage.prepare_job`) as one `_nogil.run_jobs`; the jobs by stage, for
        `Stage.job_done`. A job that fails or does not run costs nothing but itself: its stage walks again under
        its lock, and reports errors there (then no job is handed to `job_done`: each stage finds its own job
        under its lock, as a stage prepared alone does)."""
        jobs: dict[int, object] = {}
        try:
            for j in run:
                job = self.stages[j].prepare_job(raw)
                if job is None:
                    self.stages[j].prepare_trace_bytes(raw)
                else:
                    jobs[j] = job
            if jobs:
                _nogil.run_jobs(tuple(jobs.values()))  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - see the docstring
            return {}
        return jobs

    def flush_due(self, now: float | None = None) -> None:
        """Flush every stage whose interval has passed; results go through later stages to the sink."""
        now = self.ctx.clock() if now is None else now
        with self.gate.passage(), self._flush_lock:
            for i, stage in enumerate(self.stages):
                due = self._next_flush[i]
                if due is None or now < due:
                    continue
                self._next_flush[i] = now + (stage.flush_interval or 0.0)
                try:
                    with self._locks[i]:
                        began = time.perf_counter()
                        try:
                            out = stage.flush(now)
                        finally:
                            self._stage_timers[i].inc(time.perf_counter() - began)
                    if out:  # on through the later stages, this stage's lock released (no nested locks)
                        self.sink(self._through(i + 1, out))
                except Exception as exc:  # one stage's failure must not stop the others' flushes
                    self.ctx.log.error("stage %s failed to flush (%s)", stage.name, type(exc).__name__)

    def shutdown(self) -> None:
        """Stop the timer and hand everything the stages still hold to the sink."""
        self._stopping.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
        with self.gate.closed():
            self._hand_over()

    def _hand_over(self) -> None:
        """Every stage's shutdown, its output through the stages after it to the sink (caller has closed the
        gate, so no request is inside)."""
        for i, stage in enumerate(self.stages):
            try:
                out = stage.shutdown()
                if out:
                    self.sink(self._through(i + 1, out))
            except Exception as exc:  # the later stages still hand over what they hold
                self.ctx.log.error("stage %s failed at shutdown (%s)", stage.name, type(exc).__name__)

    def start_timer(self, tick: float = 0.05) -> None:
        if not any(s.flush_interval for s in self.stages):
            return

        def run() -> None:
            while not self._stopping.wait(tick):
                self.flush_due()

        self._timer = threading.Thread(target=run, name="recohop-flush", daemon=True)
        self._timer.start()


def job_runs(stages: list[Stage]) -> list[tuple[int, ...] | None]:
    """Per stage: the indexes of the stages whose `prepare_job`s run together before its lock (it and the next
    stages with jobs, as long as the ones before them hand on the bytes they got: `mutates` False); () for a
    stage prepared by such a run; None for a stage prepared alone (`prepare_trace_bytes`, if it has one)."""
    has_job = [s.takes_trace_bytes and type(s).prepare_job is not Stage.prepare_job for s in stages]
    runs: list[tuple[int, ...] | None] = [None] * len(stages)
    i = 0
    while i < len(stages):
        end = i + 1
        while has_job[i] and end < len(stages) and has_job[end] and not stages[end - 1].mutates:
            end += 1
        if end - i > 1:
            runs[i] = tuple(range(i, end))
            for j in range(i + 1, end):
                runs[j] = ()
        i = end
    return runs


def build_stages(stage_nodes: list[Node], ctx: StageContext) -> list[Stage]:
    stages = [build_stage(node, ctx) for node in stage_nodes]
    names = [s.name for s in stages]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(ctx.config_file, "pipeline", f"stage names to be unique ('{name}' repeats)")
    return stages


def build_pipeline(stage_nodes: list[Node], ctx: StageContext, sink: Sink) -> Pipeline:
    return Pipeline(build_stages(stage_nodes, ctx), ctx, sink)
