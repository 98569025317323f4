"""Tail-based sampling stage: buffer whole traces (and their logs), decide once per trace with the policy file,
send kept traces on whole, and let late spans/logs follow the cached decision.

Config: `{type: tail_sampling, policies: FILE, max_traces, max_bytes, decision_wait, root_grace,
max_spans_per_trace, decision_cache_size, flush_interval, untraced_logs_per_second: {INFO: 100, ...},
wal: {dir, fsync, fsync_interval, max_bytes}}` (the write-ahead log: see `processor/sampling/wal.py`). Decisions depend only on the trace (except
`rate_limit`), so N hops behind a trace-id load balancer keep what one hop would.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge
from prometheus_client.core import HistogramMetricFamily

from processor.config_node import ConfigError, Node
from processor.sampling.buffer import Late, TraceBuffer, TraceEntry
from processor.sampling.cache import DecisionCache
from processor.sampling.decide import EARLY_REASONS, Readiness
from processor.sampling.emit import Outbox
from processor.sampling.loglimit import UntracedLogLimits, read_limits
from processor.sampling.policies.policyset import Decision, PolicySet
from processor.sampling.policyfile import DEFAULT_POLICY_FILE, load_policy_file
from processor.sampling.wal import LOGS, TRACES, Decided, WalSettings, WriteAheadLog, read_wal_settings
from processor.sampling.wire import field
from processor.stages.base import Emitted, LogsRequest, Stage, StageContext, TracesRequest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.25, 2.5, 3.0, 5.0, 10.0, 15.0, 30.0)


@dataclass
class Settings:
    policies: Path = DEFAULT_POLICY_FILE
    max_traces: int = 100_000
    max_bytes: int = 256 << 20
    decision_wait: float = 10.0
    root_grace: float = 2.0
    max_spans_per_trace: int = 5_000
    decision_cache_size: int = 200_000
    flush_interval: float = 0.1
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

    def __init__(self, registry: Any) -> None:
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
        self.buffer = TraceBuffer(policies.needs, settings.max_spans_per_trace)
        self.ready = Readiness(settings.decision_wait, settings.root_grace, settings.max_traces,
                               settings.max_bytes)
        self.cache: DecisionCache[Decision] = DecisionCache(settings.decision_cache_size)
        self.out = Outbox()
        self.metrics = SamplingMetrics(ctx.registry)
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
        roots: list[TraceEntry] = []
        full: list[TraceEntry] = []
        late = Late()
        if self.buffer.add_span_bytes(raw, now, self.cache, roots, full, late) is None:
            self.buffer.add_spans(TracesRequest.FromString(raw), now, self.cache, roots, full, late)
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
        reason = self.ready.over_budget(self.buffer)
        while reason is not None:
            entry = self.ready.next_to_relieve(self.buffer)
            if entry is None:
                break
            self._decide(entry, now, reason)
            reason = self.ready.over_budget(self.buffer)

    def _decide(self, entry: TraceEntry, now: float, reason: str) -> None:
        self._decide_all(((entry, reason),), now)

    def _decide_all(self, due: Iterable[tuple[TraceEntry, str]], now: float) -> None:
        """Decide each listed trace once (an entry listed twice, or already decided, is skipped). This runs once
        per trace, so everything it calls is looked up once per batch."""
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
        for entry, reason in due:
            trace_id = entry.trace_id
            if traces.get(trace_id) is not entry:
                continue  # already decided (listed by more than one trigger)
            try:
                if not entry.scanned:
                    complete(entry)
                decision = decide(entry, now)
            except Exception as exc:  # never wedge the buffer on one trace: keep it and go on
                self.ctx.log.error("tail sampling could not evaluate a trace (%s); keeping it", type(exc).__name__)
                decision = self.policies.on_error
            cache_put(trace_id, decision)
            if wal_decided is not None:
                wal_decided.append((trace_id, decision.kept, decision.policy))
            if decision.kept:
                add_trace(entry, decision, by_id)
            if entry.nlogs:
                metrics.log_outcomes["kept" if decision.kept else "dropped"].inc(entry.nlogs)
            remove(entry)
            tally[decision] = tally.get(decision, 0) + 1
            observe(now - entry.first)
            if reason in EARLY_REASONS:
                metrics.early[reason] = metrics.early.get(reason, 0) + 1
            publish(trace_id, decision.kept, decision.policy)

    def flush(self, now: float) -> Emitted | None:
        self._decide_all(self.ready.due(self.buffer, now), now)
        self._gauges()
        self._wal_decisions()
        if self.wal is not None:
            self.wal.tick(now)
        return self._take()

    def shutdown(self) -> Emitted | None:
        now = self.clock()
        for entry in list(self.buffer.traces.values()):
            self._decide(entry, now, "shutdown")
        self.ready.forget()
        self._gauges()
        if self.wal is not None:  # everything is decided and handed on: a restart must not send it again
            self.wal.close(clean=True)
            self.wal = None
        return self._take()

    def buffer_spans(self) -> int:
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
        for entry in self.buffer.traces.values():
            for kind, chunks in ((TRACES, entry.chunks), (LOGS, entry.log_chunks or {})):
                for gid, chunk in chunks.items():
                    group = groups[gid]
                    yield kind, field(1, group.resource_field + field(2, group.scope_field + chunk))

    def _gauges(self) -> None:
        self.metrics.publish()
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
    if settings.wal is not None:
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
