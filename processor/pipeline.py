"""Builds the stages from config and runs requests through them, in order, under one lock.

The span's whole path reads top to bottom here: receiver -> `Pipeline.process` -> each stage -> exporter.
Timer flushes from stage i continue through stages i+1..n, so e.g. traces released by tail sampling still
pass any stage configured after it.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter

from processor.config_node import ConfigError, Node
from processor.native import load as load_native
from processor.stages.base import Emitted, Rejections, Stage, StageContext, TracesRequest

_wire = load_native("otlpwire")

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


def as_trace_bytes(request: TracesRequest | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def as_trace_message(request: TracesRequest | bytes) -> TracesRequest:
    return TracesRequest.FromString(request) if isinstance(request, bytes) else request


def count_items(signal: str, request: object) -> int:
    """Spans, metric data points or log records in one export request (a traces request may be serialized)."""
    if isinstance(request, bytes):
        counted = _wire.count_spans(request) if _wire is not None else None
        return counted if counted is not None else count_items(signal, as_trace_message(request))
    if signal == "traces":
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)  # type: ignore[attr-defined]
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)  # type: ignore[attr-defined]
    total = 0
    for rm in request.resource_metrics:  # type: ignore[attr-defined]
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                field = metric.WhichOneof("data")
                if field is not None:
                    total += len(getattr(metric, field).data_points)
    return total


Sink = Callable[[Emitted], None]


class Pipeline:
    """Owns the stages; every call into a stage happens under `self.lock`."""

    def __init__(self, stages: list[Stage], ctx: StageContext, sink: Sink) -> None:
        self.sink = sink
        self.lock = threading.Lock()
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
        self._stage_seconds = Counter(
            "recohop_stage_seconds", "Time spent inside each stage", ["stage"], registry=ctx.registry)
        self._stage_timers = [self._stage_seconds.labels(s.name) for s in stages]
        self._next_flush = [
            (ctx.clock() + s.flush_interval) if s.flush_interval else None for s in stages]

    def replace(self, build: Callable[[], tuple[list[Stage], StageContext]]) -> None:
        """Swap in new stages (a config reload): the old ones hand over everything they hold first (buffered
        traces are decided, as at shutdown), so nothing is lost; requests wait on the lock meanwhile. When
        `build` fails the old stages are gone already, so the caller must be able to build them again."""
        with self.lock:
            self._hand_over()
            self._install(*build())
        if self._timer is None:
            self.start_timer()

    def process(self, batch: Emitted) -> tuple[Emitted, Rejections]:
        """Run one received batch through every stage; returns what goes on and what the stages refused of
        it (partial success). Raises Backpressure or Rejected from a stage."""
        with self.lock:
            rejections = self.ctx.rejections = Rejections()
            return self._through(0, batch), rejections

    def _through(self, start: int, batch: Emitted) -> Emitted:
        traces, metrics, logs = batch.traces, batch.metrics, batch.logs
        for i in range(start, len(self.stages)):
            stage = self.stages[i]
            began = time.perf_counter()
            if traces and reads_traces(stage):
                if stage.takes_trace_bytes:
                    traces = [out for req in traces for out in stage.on_trace_bytes(as_trace_bytes(req))]
                else:
                    traces = [out for req in traces for out in stage.on_traces(as_trace_message(req))]
            if metrics:
                metrics = [out for req in metrics for out in stage.on_metrics(req)]
            if logs:
                logs = [out for req in logs for out in stage.on_logs(req)]
            self._stage_timers[i].inc(time.perf_counter() - began)
        return Emitted(traces, metrics, logs)

    def flush_due(self, now: float | None = None) -> None:
        """Flush every stage whose interval has passed; results go through later stages to the sink."""
        now = self.ctx.clock() if now is None else now
        with self.lock:
            for i, stage in enumerate(self.stages):
                due = self._next_flush[i]
                if due is None or now < due:
                    continue
                self._next_flush[i] = now + (stage.flush_interval or 0.0)
                began = time.perf_counter()
                try:
                    out = stage.flush(now)
                    if out:
                        self.sink(self._through(i + 1, out))
                except Exception as exc:  # one stage's failure must not stop the others' flushes
                    self.ctx.log.error("stage %s failed to flush (%s)", stage.name, type(exc).__name__)
                self._stage_timers[i].inc(time.perf_counter() - began)

    def shutdown(self) -> None:
        """Stop the timer and hand everything the stages still hold to the sink."""
        self._stopping.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
        with self.lock:
            self._hand_over()

    def _hand_over(self) -> None:
        """Every stage's shutdown, its output through the stages after it to the sink (caller holds the lock)."""
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


def build_stages(stage_nodes: list[Node], ctx: StageContext) -> list[Stage]:
    stages = [build_stage(node, ctx) for node in stage_nodes]
    names = [s.name for s in stages]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(ctx.config_file, "pipeline", f"stage names to be unique ('{name}' repeats)")
    return stages


def build_pipeline(stage_nodes: list[Node], ctx: StageContext, sink: Sink) -> Pipeline:
    return Pipeline(build_stages(stage_nodes, ctx), ctx, sink)
