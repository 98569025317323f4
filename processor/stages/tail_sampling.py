"""Tail-based sampling stage: buffer whole traces (and their logs), decide once per trace with the policy file,
send kept traces on whole, and let late spans/logs follow the cached decision.

This module only wires the parts (Refinery's collect / decide / send): the trace store collects
(`sampling/store.py`: `native_store.NativeStore` or `reference_store.ReferenceStore`), the trigger says when a
trace is ready (`sampling/trigger.py`), the policies say whether to keep it (`sampling/policies/`, one file per
kind with its per-trace and batch evaluation), the outbox sends kept traces on with their deciding policy
(`sampling/emit.py`); beside them the write-ahead log (`sampling/store_wal.py`) and the self-metrics
(`sampling/metrics.py`).

Config: `{type: tail_sampling, policies: FILE, max_traces, max_bytes, decision_wait, root_grace,
max_spans_per_trace, decision_cache_size, flush_interval, untraced_logs_per_second: {INFO: 100, ...},
wal: {dir, fsync, fsync_interval, max_bytes}}` (the write-ahead log: see `processor/sampling/wal.py`). Decisions depend only on the trace (except
`rate_limit`), so N hops behind a trace-id load balancer keep what one hop would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from processor.config_node import ConfigError, Node
from processor.sampling.buffer import Late
from processor.sampling.decided import BatchDecisions
from processor.sampling.emit import Outbox
from processor.sampling.loglimit import UntracedLogLimits, read_limits
from processor.sampling.metrics import SamplingMetrics
from processor.sampling.native_store import Layout, NativeStore
from processor.sampling.native_store import available as native_store_available
from processor.sampling.policies.policyset import PolicySet
from processor.sampling.policyfile import DEFAULT_POLICY_FILE, load_policy_file
from processor.sampling.reference_store import ReferenceStore
from processor.sampling.store import Batch, TraceStore
from processor.sampling.store_wal import StoreLog
from processor.sampling.trigger import Trigger
from processor.sampling.wal import WalSettings, WriteAheadLog, read_wal_settings
from processor.schema import value
from processor.stages.base import Emitted, LogsRequest, Stage, StageContext, TracesRequest


@dataclass
class Settings:
    policies: Path = DEFAULT_POLICY_FILE
    # Defaults: processor/schema.py (the byte budget, max_bytes, is what bounds memory; max_traces the count).
    max_traces: int = value("tail_sampling.max_traces")
    max_bytes: int = value("tail_sampling.max_bytes")
    decision_wait: float = value("tail_sampling.decision_wait")
    root_grace: float = value("tail_sampling.root_grace")
    max_spans_per_trace: int = value("tail_sampling.max_spans_per_trace")
    decision_cache_size: int = value("tail_sampling.decision_cache_size")
    flush_interval: float = value("tail_sampling.flush_interval")
    wal: WalSettings | None = None


def default_stage_config() -> dict[str, Any]:
    """The built-in tail-sampling stage config (the mission's default policy file)."""
    s = Settings()
    return {"type": "tail_sampling", "policies": str(s.policies), "max_traces": s.max_traces,
            "max_bytes": s.max_bytes, "decision_wait": s.decision_wait, "root_grace": s.root_grace,
            "max_spans_per_trace": s.max_spans_per_trace, "decision_cache_size": s.decision_cache_size,
            "flush_interval": s.flush_interval}


def open_store(policies: PolicySet, settings: Settings, trigger: Trigger) -> TraceStore:
    """The native store when built and the policy set fits its bit budget (at most 64 exact-value gates and 64
    read-all keys); else (or with RECOHOP_NATIVE=0) the reference store."""
    layout = Layout(policies) if native_store_available() else None
    if layout is not None and layout.fits():
        return NativeStore(policies, layout, settings.max_spans_per_trace, settings.decision_cache_size, trigger)
    return ReferenceStore(policies, settings.max_spans_per_trace, settings.decision_cache_size, trigger)


class TailSampling(Stage):
    name = "tail_sampling"
    mutates = True
    takes_trace_bytes = True

    def __init__(self, policies: PolicySet, settings: Settings, ctx: StageContext) -> None:
        self.policies = policies
        self.settings = settings
        self.flush_interval = settings.flush_interval
        self.ctx = ctx
        self.clock = ctx.clock
        self.bus = ctx.decisions
        self.trigger = Trigger(settings.decision_wait, settings.root_grace, settings.max_traces,
                               settings.max_bytes)
        self.store = open_store(policies, settings, self.trigger)
        self.out = Outbox()
        self.metrics = SamplingMetrics(ctx.registry, policies)
        self.log_limits: UntracedLogLimits | None = None
        self.wal = StoreLog(settings.wal is not None)
        self._replayed = Emitted()  # what replaying the log sent on: handed over by the first flush

    # -- collect ----------------------------------------------------------------------------------------------

    def on_traces(self, request: TracesRequest) -> list[TracesRequest]:
        return [TracesRequest.FromString(raw) for raw in self.on_trace_bytes(request.SerializeToString())]

    def prepare_trace_bytes(self, raw: bytes) -> None:
        """The store's first intake pass, ahead of the stage's lock (`Stage.prepare_trace_bytes`)."""
        self.store.prepare(raw)

    def prepare_job(self, raw: bytes) -> object | None:
        """The store's parse as a job; it buffers the request too (see `job_done`), except with a write-ahead log,
        whose order must be the order requests are buffered in (both under the stage's lock)."""
        return self.store.prepare_job(raw, None if self.wal.wants_decisions else self.clock())

    def job_done(self, raw: bytes, job: object) -> list[bytes] | None:
        """Most requests are done once their job ran: it buffered them, and nothing they brought (a full trace,
        late spans of a kept trace, a group to forget, a buffer over budget) needs the stage's lock. The flush,
        which holds that lock while it decides, then does not hold them up."""
        done = self.store.merged_plainly(raw, job)
        if done is None:
            return None
        dropped, traces, nbytes = done
        if dropped:
            self.metrics.late_drop.inc(dropped)
        self.metrics.buffer_size(traces, nbytes)
        return []

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        """The hot path: serialized request in (buffered per trace by the store), the serialized spans of
        late-arriving kept traces out."""
        self.wal.append_traces(raw)
        now = self.clock()
        late = Late()
        try:  # transactional: an exception here leaves the store as it was, and the request is refused
            full = self.store.intake_spans(raw, now, late)
        except Exception as exc:
            self._fault("intake", exc)
            raise
        if late.invalid_spans:
            self.ctx.reject(late.invalid_spans, "spans without a valid 16-byte trace id")
        self._late(late)
        if full:
            self._decide(lambda: self.store.select_full(full), now)
        self._relieve(now)
        self._end_call()
        return self.out.take_trace_bytes()

    def on_logs(self, request: LogsRequest) -> list[LogsRequest]:
        self.wal.append_logs(request)
        now = self.clock()
        late = Late()
        passed: list[Any] = []
        buffered = self.store.intake_logs(request, now, late, passed)
        outcomes = self.metrics.log_outcomes
        limits = self.log_limits
        if limits is not None and passed:
            allowed = [p for p in passed if limits.allow(p[2], now)]
            if len(allowed) < len(passed):
                outcomes["rate_limited"].inc(len(passed) - len(allowed))
                passed, buffered = allowed, buffered or -1  # -1: the request must be rebuilt
        if passed:
            outcomes["passed"].inc(len(passed))
        if not buffered and not late.logs and not late.dropped_logs:
            return [request, *self.out.take_logs()]  # nothing had a trace id: pass the request as it is
        if buffered > 0:
            outcomes["buffered"].inc(buffered)
        for group, data, _severity in passed:
            self.out.add_log(group, data)
        self._late(late)
        self._relieve(now)
        self._end_call()
        return self.out.take_logs()

    def _late(self, late: Late) -> None:
        """Spans and logs of decided traces follow their decision (kept ones are sent at once)."""
        if late.spans:
            self.metrics.late_keep.inc(len(late.spans))
            for group, data, is_root, decision in late.spans:
                self.out.add_late_span(group, data, is_root, decision)
        if late.dropped_spans:
            self.metrics.late_drop.inc(late.dropped_spans)
        if late.logs:
            self.metrics.log_outcomes["late_kept"].inc(len(late.logs))
            for group, data in late.logs:
                self.out.add_log(group, data)
        if late.dropped_logs:
            self.metrics.log_outcomes["late_dropped"].inc(late.dropped_logs)

    # -- decide (the trigger says when, the store selects, the policies decide) ------------------------------

    def _relieve(self, now: float) -> None:
        """Over budget: decide traces now with the data they have (never drop them undecided)."""
        traces, nbytes = self.store.size()
        if self.trigger.over_budget(traces, nbytes) is not None:
            self._decide(self.store.select_relieve, now)

    def flush(self, now: float) -> Emitted | None:
        self._decide(lambda: self.store.select_due(now), now)
        self._end_call()
        self.wal.tick(now)
        return self._take()

    def shutdown(self) -> Emitted | None:
        self._decide(self.store.select_all, self.clock())
        self._end_call()
        # Everything decided and handed on: a restart must not send it again. Traces a fault kept in the
        # store are not lost: the log stays for the next start to replay.
        self.wal.close(clean=not self.store.size()[0])
        return self._take()

    def _decide(self, select: Callable[[], Batch], now: float) -> None:
        """Select a batch in the store and decide it. The batch is always closed: finished with its decisions,
        or aborted (its traces stay buffered for the next selection) when its kept traces could not be handed
        on or the store refused the decisions. Faults are counted, never raised: the request or timer that
        triggered the decision has already been taken."""
        store = self.store
        try:
            batch = select()
        except Exception as exc:
            self._fault("select", exc)
            store.abort()
            return
        try:
            self._decide_batch(batch, now)
        finally:
            store.abort()  # a no-op once finished

    def _decide_batch(self, batch: Batch, now: float) -> None:
        store = self.store
        if not batch.n:
            store.finish(batch, np.empty(0, dtype=np.int32), np.empty(0, dtype=bool))
            return
        slots = store.decide(batch, now, self._fault)
        kept = store.slots.kept(slots)
        decisions = store.slots.decisions
        mark = self.out.checkpoint()
        try:  # send: only kept traces' bytes come back from the store, most of them already serialized
            by_id = store.groups.by_id
            add_trace = self.out.add_trace
            kept_entry = store.kept_entry
            for row in store.emit_kept(batch, np.flatnonzero(kept), slots, self.out).tolist():
                add_trace(kept_entry(batch, row), decisions[slots[row]], by_id)
        except Exception as exc:
            self.out.rollback(mark)
            self._fault("emit", exc)
            return
        try:
            store.finish(batch, slots, kept)
        except Exception as exc:
            self.out.rollback(mark)
            self._fault("finish", exc)
            return
        try:
            self._decided(batch, slots, kept, now)
        except Exception as exc:
            self._fault("publish", exc)

    def _decided(self, batch: Batch, slots: np.ndarray, kept: np.ndarray, now: float) -> None:
        """Bookkeeping once a batch's decisions are recorded: the store's groups, metrics, the decision bus
        (each decision with its reason: the deciding policy), the write-ahead log."""
        self.store.release(batch)
        decisions = self.store.slots.decisions
        self.metrics.batch_decided(slots, kept, decisions, batch.nlogs, batch.first, batch.reasons, batch.why, now)
        if self.bus.has_listeners() or self.wal.wants_decisions:
            decided = BatchDecisions(batch, slots, kept, decisions)
            if self.wal.wants_decisions:
                self.wal.decided(*decided.columns())
            self.bus.publish_batch(decided)

    def _fault(self, step: str, exc: BaseException) -> None:
        """Count and log an exception the stage survives (the caller leaves the store consistent)."""
        self.metrics.fault_steps[step].inc()
        self.ctx.log.error("tail sampling: %s failed (%s: %s); the stage goes on", step, type(exc).__name__, exc)

    # -- send -------------------------------------------------------------------------------------------------

    def _end_call(self) -> None:
        self.metrics.publish(*self.store.size())
        self.wal.commit()

    def _take(self) -> Emitted | None:
        traces, spans = self.out.take_counted_trace_bytes()  # serialized: the exporter sends bytes as they are
        emitted = Emitted(traces=list(traces), logs=self.out.take_logs(), trace_spans=spans)
        if self._replayed:
            self._replayed.extend(emitted)
            emitted, self._replayed = self._replayed, Emitted()
        return emitted or None

    def buffer_spans(self) -> int:
        return self.store.stats()[2]

    # -- write-ahead log --------------------------------------------------------------------------------------

    def recover(self, wal: WriteAheadLog) -> None:
        """Replay the log of a hop that did not stop cleanly (`StoreLog.recover`), then log from here on."""
        self.wal.recover(wal, self.store, self.policies,
                         lambda raw: self._replayed.traces.extend(self.on_trace_bytes(raw)),
                         lambda logs: self._replayed.logs.extend(self.on_logs(logs)))


def read_settings(node: Node) -> Settings:
    d = Settings()
    policies = node.path_value("policies")
    settings = Settings(
        policies=policies if policies is not None else d.policies,
        max_traces=node.int("max_traces", d.max_traces, minimum=1),
        max_bytes=node.size("max_bytes", d.max_bytes),
        decision_wait=node.duration("decision_wait", d.decision_wait),
        root_grace=node.duration("root_grace", d.root_grace),
        max_spans_per_trace=node.int("max_spans_per_trace", d.max_spans_per_trace, minimum=1),
        decision_cache_size=node.int("decision_cache_size", d.decision_cache_size, minimum=2),
        flush_interval=node.duration("flush_interval", d.flush_interval),
    )
    if node.has("wal"):
        settings.wal = read_wal_settings(node.child("wal"), settings.decision_cache_size)
    if settings.flush_interval <= 0:
        raise node.error("flush_interval", "a duration above zero (decisions are released on this timer)")
    return settings


def build(node: Node, ctx: StageContext) -> Stage:
    settings = read_settings(node)
    if not settings.policies.is_file():
        raise node.error("policies", "the path of an existing policy file", str(settings.policies))
    stage = TailSampling(load_policy_file(settings.policies), settings, ctx)
    stage.log_limits = read_limits(node, "untraced_logs_per_second")
    stage.name = node.str("name", "tail_sampling")
    if settings.wal is not None and not ctx.validate_only:
        stage.recover(open_wal(node, settings.wal, ctx))
    return stage


def open_wal(node: Node, settings: WalSettings, ctx: StageContext) -> WriteAheadLog:
    where = node.key_path("wal") + ".dir"
    try:
        return WriteAheadLog(settings, ctx.registry, ctx.log, ctx.clock)
    except BlockingIOError:
        raise ConfigError(node.file, where, "a directory no other running hop uses (it is locked)") from None
    except OSError as exc:
        raise ConfigError(node.file, where, "a directory this hop can create and write",
                          exc.strerror or type(exc).__name__) from None
