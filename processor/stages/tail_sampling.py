"""Tail-based sampling stage: buffer whole traces (and their logs), decide once per trace with the policy file,
send kept traces on whole, and let late spans/logs follow the cached decision.

Config: `{type: tail_sampling, policies: FILE, max_traces, max_bytes, decision_wait, root_grace,
max_spans_per_trace, decision_cache_size, flush_interval, untraced_logs_per_second: {INFO: 100, ...},
wal: {dir, fsync, fsync_interval, max_bytes}}` (the write-ahead log: see `processor/sampling/wal.py`). Decisions depend only on the trace (except
`rate_limit`), so N hops behind a trace-id load balancer keep what one hop would.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge
from prometheus_client.core import HistogramMetricFamily

from processor.config_node import ConfigError, Node
from processor.sampling.buffer import Late, TraceBuffer, TraceEntry
from processor.sampling.cache import DecisionCache
from processor.sampling.decide import EARLY_REASONS, RELIEVE_TO, Readiness
from processor.sampling.emit import Outbox
from processor.sampling.loglimit import UntracedLogLimits, read_limits
from processor.sampling.native_store import RECORD, Facts, Layout, NativeBuffer, NativeCache
from processor.sampling.native_store import available as native_store_available
from processor.sampling.policies.policyset import Decision, PolicySet
from processor.sampling.policyfile import DEFAULT_POLICY_FILE, load_policy_file
from processor.sampling.wal import LOGS, TRACES, Decided, WalSettings, WriteAheadLog, read_wal_settings
from processor.sampling.wire import field
from processor.schema import value
from processor.stages.base import Emitted, LogsRequest, Stage, StageContext, TracesRequest

# Where a fault can happen (`recohop_sampling_faults_total{step}`): intake (refused whole, nothing changed), then
# per decision batch: select, facts, decide (both decided on_error), emit, finish (batch aborted: its traces stay
# buffered for the next selection), publish (after the decisions are recorded: only bookkeeping is lost).
FAULT_STEPS = ("intake", "select", "facts", "decide", "emit", "finish", "publish")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.25, 2.5, 3.0, 5.0, 10.0, 15.0, 30.0)


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


class LatencyHistogram:
    """`recohop_sampling_decision_latency_seconds` as a custom collector: one bisect per decision instead of a
    locked prometheus_client Histogram.observe on the decision path."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = list(buckets)
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: np.ndarray) -> None:
        """`observe` for a batch (searchsorted 'left' is bisect_left)."""
        found = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        for i in np.flatnonzero(found).tolist():
            self.counts[i] += int(found[i])
        self.sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family = HistogramMetricFamily(self.name, self.doc)
        family.add_metric([], buckets, self.sum)
        yield family


class SamplingMetrics:
    """Self-metrics; decision counts are tallied in plain dicts on the hot path and published per batch."""

    def __init__(self, registry: Any, policies: PolicySet | None = None) -> None:
        self.buffer_traces = Gauge("recohop_sampling_buffer_traces", "Traces waiting for a decision",
                                   registry=registry)
        self.buffer_bytes = Gauge("recohop_sampling_buffer_bytes",
                                  "Serialized bytes of spans and logs waiting for a decision", registry=registry)
        self.decisions = Counter("recohop_sampling_decisions", "Trace decisions by deciding policy",
                                 ["policy", "decision"], registry=registry)
        self.decided_early = Counter("recohop_sampling_decided_early",
                                     "Traces decided before their time, by reason", ["reason"], registry=registry)
        self.late_spans = Counter("recohop_sampling_late_spans", "Spans arriving after their trace's decision",
                                  ["decision"], registry=registry)
        self.latency = LatencyHistogram("recohop_sampling_decision_latency_seconds",
                                        "First span of a trace to its decision", LATENCY_BUCKETS)
        if registry is not None:
            registry.register(self.latency)
        self.logs = Counter("recohop_sampling_logs", "Log records by sampling outcome", ["outcome"],
                            registry=registry)
        # Every outcome the policy file can give and every early reason exist at 0 from start: a healthy hop
        # answers "0 decided early" instead of "no data".
        if policies is not None:
            outcomes = [(p.name, "keep") for p in policies.keeps] + [(p.name, "drop") for p in policies.drops]
            for decision in (policies.no_match, policies.on_error):
                outcomes.append((decision.policy, "keep" if decision.kept else "drop"))
            for policy, outcome in outcomes:
                self.decisions.labels(policy, outcome)
        for reason in EARLY_REASONS:
            self.decided_early.labels(reason)
        self.faults = Counter("recohop_sampling_faults", "Exceptions met by tail sampling, by step (the stage goes on)",
                              ["step"], registry=registry)
        self.fault_steps = {step: self.faults.labels(step) for step in FAULT_STEPS}
        self.late_keep = self.late_spans.labels("keep")
        self.late_drop = self.late_spans.labels("drop")
        self.log_outcomes = {o: self.logs.labels(o) for o in
                             ("buffered", "kept", "dropped", "passed", "late_kept", "late_dropped", "rate_limited")}
        self.tally: dict[Decision, int] = {}
        self.early: dict[str, int] = {}

    def publish(self) -> None:
        """Move the batch's tallies into the prometheus counters."""
        for decision, count in self.tally.items():
            self.decisions.labels(decision.policy, "keep" if decision.kept else "drop").inc(count)
        self.tally.clear()
        for reason, count in self.early.items():
            self.decided_early.labels(reason).inc(count)
        self.early.clear()


class TailSampling(Stage):
    name = "tail_sampling"
    mutates = True

    def __init__(self, policies: PolicySet, settings: Settings, ctx: StageContext) -> None:
        self.policies = policies
        self.settings = settings
        self.flush_interval = settings.flush_interval
        self.ctx = ctx
        self.clock = ctx.clock
        self.bus = ctx.decisions
        self.ready = Readiness(settings.decision_wait, settings.root_grace, settings.max_traces,
                               settings.max_bytes)
        # The native trace store when built (RECOHOP_NATIVE=0 or a policy set beyond its bit budget: Python).
        self.native: NativeBuffer | None = None
        layout = Layout(policies) if native_store_available() else None
        if layout is not None and layout.fits():
            self.native = NativeBuffer(policies, layout, settings.max_spans_per_trace,
                                       settings.decision_cache_size)
            self.buffer: Any = self.native
            self.cache: Any = NativeCache(self.native)
            self._kept = self.native.decider.kept_array()
        else:
            self.buffer = TraceBuffer(policies.needs, settings.max_spans_per_trace)
            self.cache = DecisionCache[Decision](settings.decision_cache_size)
        self.out = Outbox()
        self.metrics = SamplingMetrics(ctx.registry, policies)
        self.log_limits: UntracedLogLimits | None = None
        self.wal: WriteAheadLog | None = None
        # Decisions of this call, logged as one record (None: no write-ahead log configured).
        self._wal_decided: list[Decided] | None = [] if settings.wal is not None else None
        self._replayed = Emitted()  # what replaying the log sent on: handed over by the first flush

    # -- intake ---------------------------------------------------------------------------------------------

    takes_trace_bytes = True

    def on_traces(self, request: TracesRequest) -> list[TracesRequest]:
        return [TracesRequest.FromString(raw) for raw in self.on_trace_bytes(request.SerializeToString())]

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        """The hot path: serialized request in (buffered per trace by the native intake when built), the
        serialized spans of late-arriving kept traces out."""
        if self.wal is not None:
            self.wal.append_traces(raw)
        now = self.clock()
        if self.native is not None:
            late = Late()
            store = self.native.store
            try:  # transactional: an exception here leaves the store as it was, and the request is refused
                full = self.native.add_span_bytes(raw, now, late)
                if full is None:  # bytes upb accepted but the store does not read (e.g. unknown field kinds)
                    full = self._canonical_intake(raw, now, late)
            except Exception as exc:
                self._fault("intake", exc)
                raise
            if late.invalid_spans:
                self.ctx.reject(late.invalid_spans, "spans without a valid 16-byte trace id")
            self._late(late)
            if full:
                self._decide_native(lambda: store.select_ids(full), ("max_spans",), now)
            self._relieve(now)
            self._gauges()
            self._wal_decisions()
            return self.out.take_trace_bytes()
        roots: list[TraceEntry] = []
        full: list[TraceEntry] = []
        late = Late()
        try:
            self.buffer.add_spans(TracesRequest.FromString(raw), now, self.cache, roots, full, late)
        except Exception as exc:
            self._fault("intake", exc)
            raise
        if late.invalid_spans:
            self.ctx.reject(late.invalid_spans, "spans without a valid 16-byte trace id")
        if roots:
            self.ready.roots_arrived(roots, now)
        self._late(late)
        for entry in full:
            self._decide(entry, now, "max_spans")
        self._relieve(now)
        self._gauges()
        self._wal_decisions()
        return self.out.take_trace_bytes()

    def on_logs(self, request: LogsRequest) -> list[LogsRequest]:
        if self.wal is not None:
            self.wal.append_logs(request.SerializeToString())
        now = self.clock()
        late = Late()
        passed: list[Any] = []
        buffered = self.buffer.add_logs(request, now, self.cache, late, passed)
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
        self._gauges()
        self._wal_decisions()
        return self.out.take_logs()

    def _fault(self, step: str, exc: BaseException) -> None:
        """Count and log an exception the stage survives (the caller leaves the buffer consistent)."""
        self.metrics.fault_steps[step].inc()
        self.ctx.log.error("tail sampling: %s failed (%s: %s); the stage goes on", step, type(exc).__name__, exc)

    def _late(self, late: Late) -> None:
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

    # -- decisions ------------------------------------------------------------------------------------------

    def _relieve(self, now: float) -> None:
        """Over budget: decide traces now with the data they have (never drop them undecided)."""
        if self.native is not None:
            store = self.native.store
            traces, nbytes, _ = store.stats()
            if nbytes > self.settings.max_bytes or traces > self.settings.max_traces:
                max_bytes = int(self.settings.max_bytes * RELIEVE_TO)
                max_traces = int(self.settings.max_traces * RELIEVE_TO)
                self._decide_native(lambda: store.select_relieve(max_bytes, max_traces),
                                    ("max_bytes", "max_traces"), now)
            return
        reason = self.ready.over_budget(self.buffer)
        while reason is not None:
            entry = self.ready.next_to_relieve(self.buffer)
            if entry is None or not self._decide(entry, now, reason):
                break  # nothing left, or a trace that could not be sent stays: retried on the next call
            reason = self.ready.over_budget(self.buffer, RELIEVE_TO)

    def _decide(self, entry: TraceEntry, now: float, reason: str) -> int:
        return self._decide_all(((entry, reason),), now)

    def _decide_all(self, due: Iterable[tuple[TraceEntry, str]], now: float) -> int:
        """Decide each listed trace once (an entry listed twice, or already decided, is skipped); returns how
        many were decided. A trace whose bytes cannot be handed on stays buffered, undecided (decision_wait lists
        it again). This runs once per trace, so everything it calls is looked up once per batch."""
        traces = self.buffer.traces
        complete = self.buffer.complete
        decide = self.policies.decide
        cache_put = self.cache.put
        wal_decided = self._wal_decided
        add_trace = self.out.add_trace
        by_id = self.buffer.groups.by_id
        remove = self.buffer.remove
        metrics = self.metrics
        tally = metrics.tally
        observe = metrics.latency.observe
        publish = self.bus.publish
        out = self.out
        decided = 0
        for entry, reason in due:
            trace_id = entry.trace_id
            if traces.get(trace_id) is not entry:
                continue  # already decided (listed by more than one trigger)
            try:
                complete(entry)
                decision = decide(entry, now)
            except Exception as exc:  # never wedge the buffer on one trace: keep it and go on
                self._fault("decide", exc)
                decision = self.policies.on_error
            if decision.kept:
                mark = out.checkpoint()
                try:
                    add_trace(entry, decision, by_id)
                except Exception as exc:
                    out.rollback(mark)
                    self._fault("emit", exc)
                    continue
            cache_put(trace_id, decision)
            remove(entry)
            decided += 1
            try:
                if wal_decided is not None:
                    wal_decided.append((trace_id, decision.kept, decision.policy))
                if entry.nlogs:
                    metrics.log_outcomes["kept" if decision.kept else "dropped"].inc(entry.nlogs)
                tally[decision] = tally.get(decision, 0) + 1
                observe(now - entry.first)
                if reason in EARLY_REASONS:
                    metrics.early[reason] = metrics.early.get(reason, 0) + 1
                publish(trace_id, decision.kept, decision.policy)
            except Exception as exc:
                self._fault("publish", exc)
        return decided

    def _decide_native(self, select: Callable[[], tuple[bytes, bytes, bytes]], reasons: tuple[str, ...],
                       now: float) -> None:
        """Select a batch in the native store and decide it. The batch is always closed: finished with its
        decisions, or aborted (its traces stay buffered for the next selection) when its kept traces could not
        be handed on or the store refused the decisions. Faults are counted, never raised: the request or timer
        that triggered the decision has already been taken."""
        store = self._native().store
        try:
            batch = select()
        except Exception as exc:
            self._fault("select", exc)
            store.abort()
            return
        try:
            self._decide_batch(batch, reasons, now)
        finally:
            store.abort()  # a no-op once finished

    def _native(self) -> NativeBuffer:
        native = self.native
        assert native is not None
        return native

    def _decide_batch(self, batch: tuple[bytes, bytes, bytes], reasons: tuple[str, ...], now: float) -> None:
        """`_decide_all` for a batch selected by the native store: policies evaluated over arrays, only kept
        traces' bytes come back to Python, then the store caches the decisions and frees the entries."""
        native = self._native()
        raw, durs, why = batch
        store = native.store
        if not raw:
            store.finish(b"")
            return
        decider = native.decider
        recs = np.frombuffer(raw, dtype=RECORD)
        n = len(recs)
        step = "facts"
        facts: Facts | None = None
        try:
            facts = Facts(raw, durs, native.layout, store.batch_chunks, native.groups)
            step = "decide"
            slots = decider.decide(facts, now)
        except Exception as exc:  # never wedge the buffer: keep the batch (as the per-trace path does)
            self._fault(step, exc)
            slots = np.full(n, decider.on_error, dtype=np.int32)
        if len(self._kept) < len(decider.decisions):
            self._kept = decider.kept_array()
        kept = self._kept[slots]
        decisions = decider.decisions
        nspans, nlogs = recs["nspans"], recs["nlogs"]
        size = RECORD.itemsize
        mark = self.out.checkpoint()
        try:
            by_id = native.groups.by_id
            add_trace = self.out.add_trace
            for row in np.flatnonzero(kept).tolist():
                at = row * size
                add_trace(native.entry(row, raw[at:at + 16], int(nspans[row]), int(nlogs[row])),
                          decisions[slots[row]], by_id)
        except Exception as exc:
            self.out.rollback(mark)
            self._fault("emit", exc)
            return
        try:
            released = store.finish((slots * 2 + kept).astype(np.int32).tobytes())
        except Exception as exc:
            self.out.rollback(mark)
            self._fault("finish", exc)
            return
        try:
            self._decided_batch(raw, released, slots, kept, recs, why, reasons, now)
        except Exception as exc:
            self._fault("publish", exc)

    def _decided_batch(self, raw: bytes, released: list[int], slots: np.ndarray, kept: np.ndarray,
                       recs: np.ndarray, why: bytes, reasons: tuple[str, ...], now: float) -> None:
        """Bookkeeping once a batch's decisions are recorded: groups, metrics, the decision bus, the WAL."""
        native = self._native()
        native.groups_gone(released)
        decisions = native.decider.decisions
        nlogs = recs["nlogs"]
        if nlogs.any():
            kept_logs = int(nlogs[kept].sum())
            dropped_logs = int(nlogs.sum()) - kept_logs
            if kept_logs:
                self.metrics.log_outcomes["kept"].inc(kept_logs)
            if dropped_logs:
                self.metrics.log_outcomes["dropped"].inc(dropped_logs)
        tally = self.metrics.tally
        counts = np.bincount(slots, minlength=len(decisions))
        for slot in np.flatnonzero(counts).tolist():
            tally[decisions[slot]] = tally.get(decisions[slot], 0) + int(counts[slot])
        self.metrics.latency.observe_many(now - recs["first"])
        if len(reasons) == 1:
            counted = {reasons[0]: len(recs)}
        else:
            found = np.bincount(np.frombuffer(why, dtype=np.uint8), minlength=len(reasons))
            counted = {reasons[i]: int(found[i]) for i in np.flatnonzero(found).tolist()}
        for reason, count in counted.items():
            if reason in EARLY_REASONS:
                self.metrics.early[reason] = self.metrics.early.get(reason, 0) + count
        if self.bus.has_listeners() or self._wal_decided is not None:
            size = RECORD.itemsize
            ids = [raw[at:at + 16] for at in range(0, len(raw), size)]
            kept_list = kept.tolist()
            names = [decisions[slot].policy for slot in slots.tolist()]
            if self._wal_decided is not None:
                self._wal_decided.extend(zip(ids, kept_list, names, strict=True))
            self.bus.publish_batch(ids, kept_list, names)

    def _canonical_intake(self, raw: bytes, now: float, late: Late) -> list[bytes]:
        """A request the store did not read: its canonical encoding without unknown fields (what the Python
        buffer keeps of it too); refused as partial success if even that is not readable."""
        assert self.native is not None
        request = TracesRequest.FromString(raw)
        request.DiscardUnknownFields()
        full = self.native.add_span_bytes(request.SerializeToString(), now, late)
        if full is None:
            late.invalid_spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return []
        return full

    def flush(self, now: float) -> Emitted | None:
        if self.native is not None:
            store = self.native.store
            grace, wait = self.settings.root_grace, self.settings.decision_wait
            self._decide_native(lambda: store.select_due(now, grace, wait), ("root_grace", "decision_wait"), now)
            self._gauges()
            self._wal_decisions()
            if self.wal is not None:
                self.wal.tick(now)
            return self._take()
        self._decide_all(self.ready.due(self.buffer, now), now)
        self._gauges()
        self._wal_decisions()
        if self.wal is not None:
            self.wal.tick(now)
        return self._take()

    def shutdown(self) -> Emitted | None:
        now = self.clock()
        if self.native is not None:
            self._decide_native(self.native.store.select_all, ("shutdown",), now)
        else:
            for entry in list(self.buffer.traces.values()):
                self._decide(entry, now, "shutdown")
        self.ready.forget()
        self._gauges()
        if self.wal is not None:
            # Everything decided and handed on: a restart must not send it again. Traces a fault kept in the
            # buffer are not lost: the log stays for the next start to replay.
            self._wal_decisions()
            self.wal.close(clean=not self.buffer.traces)
            self.wal = None
        return self._take()

    def buffer_spans(self) -> int:
        if self.native is not None:
            return self.native.nspans()
        return sum(e.nspans for e in self.buffer.traces.values())

    def _take(self) -> Emitted | None:
        emitted = Emitted(traces=self.out.take_traces(), logs=self.out.take_logs())
        if self._replayed:
            self._replayed.extend(emitted)
            emitted, self._replayed = self._replayed, Emitted()
        return emitted or None

    # -- write-ahead log ------------------------------------------------------------------------------------

    def _wal_decisions(self) -> None:
        decided = self._wal_decided
        if decided and self.wal is not None:
            self.wal.append_decisions(decided)
            decided.clear()

    def recover(self, wal: WriteAheadLog) -> None:
        """Replay the log of a hop that did not stop cleanly: its decisions into the cache first, then its
        requests through this stage's intake (not logged again); then log from here on."""
        ths = {p.name: p.th for p in self.policies.keeps}
        made: dict[tuple[bool, str], Decision] = {}
        for trace_id, kept, policy in wal.replay_decisions():
            decision = made.get((kept, policy))
            if decision is None:
                decision = made[(kept, policy)] = Decision(kept, policy, ths.get(policy) if kept else None)
            self.cache.put(trace_id, decision)
        for kind, payload in wal.replay_data():
            try:
                if kind == TRACES:
                    wal.metrics.replayed_spans.inc(sum(len(ss.spans) for rs in
                                                       TracesRequest.FromString(payload).resource_spans
                                                       for ss in rs.scope_spans))
                    self._replayed.traces.extend(self.on_trace_bytes(payload))
                else:
                    logs = LogsRequest.FromString(payload)
                    wal.metrics.replayed_logs.inc(sum(len(sl.log_records) for rl in logs.resource_logs
                                                      for sl in rl.scope_logs))
                    self._replayed.logs.extend(self.on_logs(logs))
            except DecodeError:
                wal.metrics.corrupt.inc()
        wal.start(self._wal_snapshot, lambda: self.buffer.nbytes)
        self.wal = wal
        self._wal_decisions()

    def _wal_snapshot(self) -> Iterator[tuple[int, bytes]]:
        """The still-buffered spans and logs as request entries (one ResourceSpans/ResourceLogs per trace and
        group), for compaction of the write-ahead log."""
        groups = self.buffer.groups.by_id
        if self.native is not None:
            for kind, gid, chunk in self.native.store.snapshot():
                group = groups[gid]
                yield (LOGS if kind else TRACES), field(1, group.resource_field + field(2, group.scope_field + chunk))
            return
        for entry in self.buffer.traces.values():
            for kind, chunks in ((TRACES, entry.chunks), (LOGS, entry.log_chunks or {})):
                for gid, chunk in chunks.items():
                    group = groups[gid]
                    yield kind, field(1, group.resource_field + field(2, group.scope_field + chunk))

    def _gauges(self) -> None:
        self.metrics.publish()
        if self.native is not None:
            traces, nbytes, _ = self.native.store.stats()
            self.metrics.buffer_traces.set(traces)
            self.metrics.buffer_bytes.set(nbytes)
            return
        self.metrics.buffer_traces.set(len(self.buffer.traces))
        self.metrics.buffer_bytes.set(self.buffer.nbytes)


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
