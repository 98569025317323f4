"""The trace buffer: spans (and log records) grouped by trace id, kept as serialized bytes per
(resource, scope) group, plus the few per-trace facts the policies need. Per span only what must be read
from the message is read on arrival (trace id, root or not, ERROR status, start/end when a trace-duration
policy exists); attribute values, named-span durations and exception events are read once per trace at
decision time by parsing the trace's spans once (`complete`: this is the reference path).

Memory: a span costs its wire size plus a 1-3 byte field prefix inside one `bytearray` per (trace, group);
resources and scopes are stored once per distinct group, not per span. The budget is counted in serialized bytes.
Only `TraceBuffer` mutates this state; the stage calls it under the pipeline lock (single-threaded ownership).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

from processor.sampling.policies.base import Needs
from processor.sampling.wire import CHILD_PREFIX, child_prefix, field

_TABLE = len(CHILD_PREFIX)
ERROR = 2  # Status.STATUS_CODE_ERROR
ERROR_CODE = b"\x18\x02"  # Status.code == ERROR as serialized (also an int attribute == 2: then confirmed)


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else None


def read_spans(chunks: Iterable[bytes | bytearray], names: frozenset[str], keys: frozenset[str],
               exceptions: bool) -> tuple[dict[str, int] | None, dict[str, list[Any]] | None, bool]:
    """(longest duration per wanted span name, values per wanted span attribute key, any `exception` event) of
    the spans in `chunks` (ScopeSpans field 2 entries). The spans are parsed, so values are read as the parser
    reads them (a KeyValue carrying unknown fields, which upb keeps in place, or fields in any order): this is
    the reference path, where being right matters more than speed. Both buffers read a trace's values here."""
    durations: dict[str, int] | None = None
    attrs: dict[str, list[Any]] | None = None
    exception = False
    for chunk in chunks:
        for span in ScopeSpans.FromString(bytes(chunk)).spans:
            if names and span.name in names:
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if end >= start:
                    if durations is None:
                        durations = {}
                    if end - start > durations.get(span.name, -1):
                        durations[span.name] = end - start
            if keys:
                for kv in span.attributes:
                    if kv.key in keys:
                        if attrs is None:
                            attrs = {}
                        attrs.setdefault(kv.key, []).append(any_value(kv.value))
            if exceptions and not exception and span.events:
                exception = any(event.name == "exception" for event in span.events)
    return durations, attrs, exception


class Group:
    """One (resource, scope) pair as it came in, pre-encoded for rebuilding requests."""

    __slots__ = ("gid", "resource_field", "scope_field", "res_attrs", "refs")

    def __init__(self, gid: int, resource_field: bytes, scope_field: bytes,
                 res_attrs: dict[str, list[Any]] | None) -> None:
        self.gid = gid
        self.resource_field = resource_field  # ResourceSpans/ResourceLogs field 1 (+ field 3 schema_url)
        self.scope_field = scope_field  # ScopeSpans/ScopeLogs field 1 (+ field 3 schema_url)
        self.res_attrs = res_attrs
        self.refs = 0


class Groups:
    """Interns (resource, scope) pairs so each buffered trace refers to them by a small int."""

    def __init__(self, resource_keys: set[str]) -> None:
        self.resource_keys = resource_keys
        self.by_key: dict[tuple[bytes, bytes], Group] = {}
        self.by_id: dict[int, Group] = {}
        self._next = 0

    def intern(self, resource: Any, resource_schema: str, scope: Any, scope_schema: str) -> Group:
        res_field = field(1, resource.SerializeToString())
        if resource_schema:
            res_field += field(3, resource_schema.encode())
        scope_field = field(1, scope.SerializeToString())
        if scope_schema:
            scope_field += field(3, scope_schema.encode())
        key = (res_field, scope_field)
        group = self.by_key.get(key)
        if group is None:
            res_attrs: dict[str, list[Any]] | None = None
            if self.resource_keys:
                for kv in resource.attributes:
                    if kv.key in self.resource_keys:
                        res_attrs = res_attrs or {}
                        res_attrs.setdefault(kv.key, []).append(any_value(kv.value))
            group = Group(self._next, res_field, scope_field, res_attrs)
            self._next += 1
            self.by_key[key] = group
            self.by_id[group.gid] = group
        return group

    def intern_fields(self, res_field: bytes, scope_field: bytes) -> Group:
        """Like `intern`, from the already-framed fields (the native intake's output)."""
        group = self.by_key.get((res_field, scope_field))
        if group is None:
            res_attrs: dict[str, list[Any]] | None = None
            if self.resource_keys:
                for kv in ResourceSpans.FromString(res_field).resource.attributes:
                    if kv.key in self.resource_keys:
                        res_attrs = res_attrs or {}
                        res_attrs.setdefault(kv.key, []).append(any_value(kv.value))
            group = Group(self._next, res_field, scope_field, res_attrs)
            self._next += 1
            self.by_key[(res_field, scope_field)] = group
            self.by_id[group.gid] = group
        return group

    def traced_log_records(self, request: Any, passed: list[tuple[Group, bytes, int]],
                           touched: list[Group]) -> Iterator[tuple[Group, bytes, bytes, int]]:
        """(group, trace id, serialized record, severity) of each log record that carries a trace id; records
        without one go to `passed`, and every group met to `touched` (both buffers take logs this way)."""
        for rl in request.resource_logs:
            resource = rl.resource
            for sl in rl.scope_logs:
                group = self.intern(resource, rl.schema_url, sl.scope, sl.schema_url)
                touched.append(group)
                for record in sl.log_records:
                    trace_id = record.trace_id
                    data = record.SerializeToString()
                    if len(trace_id) != 16 or not any(trace_id):
                        passed.append((group, data, record.severity_number))
                    else:
                        yield group, trace_id, data, record.severity_number

    def release(self, gids: Iterable[int]) -> None:
        for gid in gids:
            group = self.by_id[gid]
            group.refs -= 1
            if group.refs <= 0:
                del self.by_id[gid]
                del self.by_key[(group.resource_field, group.scope_field)]

    def forget_unused(self, groups: Iterable[Group]) -> None:
        """Drop groups no buffered trace refers to (only late, passed or refused data came with them); the
        outbox keeps the Group objects it needs, so nothing outlives its use here."""
        for group in groups:
            if group.refs <= 0 and self.by_id.get(group.gid) is group:
                del self.by_id[group.gid]
                del self.by_key[(group.resource_field, group.scope_field)]


class TraceEntry:
    """One buffered trace: its bytes per group and the facts policies read (see `policies.base.TraceView`)."""

    __slots__ = ("trace_id", "first", "root_at", "root", "nspans", "nbytes", "chunks", "log_chunks", "nlogs",
                 "error", "exception", "max_severity", "start", "end", "durations", "span_attrs", "res_attrs")

    def __init__(self, trace_id: bytes, now: float) -> None:
        self.trace_id = trace_id
        self.first = now
        self.root_at: float | None = None
        # Where the root span sits: (group id, offset of its field prefix in that chunk, its length) so the
        # kept root can be annotated by splicing bytes, without parsing.
        self.root: tuple[int, int, int] | None = None
        self.nspans = 0
        self.nbytes = 0
        self.chunks: dict[int, bytearray] = {}
        self.log_chunks: dict[int, bytearray] | None = None
        self.nlogs = 0
        self.error = False
        self.exception = False
        self.max_severity = 0
        self.start = 1 << 64
        self.end = 0
        self.durations: dict[str, int] | None = None
        self.span_attrs: dict[str, list[Any]] | None = None
        self.res_attrs: dict[str, list[Any]] | None = None

    def gids(self) -> list[int]:
        return [*self.chunks, *(self.log_chunks or ())]


class Late:
    """Spans/logs that arrived after their trace's decision and follow it (kept ones are sent at once)."""

    def __init__(self) -> None:
        self.spans: list[tuple[Group, bytes, bool, Any]] = []  # group, bytes, is_root, decision
        self.logs: list[tuple[Group, bytes]] = []
        self.dropped_spans = 0
        self.dropped_logs = 0
        self.invalid_spans = 0  # no 16-byte non-zero trace id: refused (partial success), never buffered


class TraceBuffer:
    def __init__(self, needs: Needs, max_spans_per_trace: int) -> None:
        self.needs = needs
        self.groups = Groups(needs.resource_keys)
        self.traces: dict[bytes, TraceEntry] = {}  # insertion order = first-seen order
        self.nbytes = 0
        self.max_spans = max_spans_per_trace
        self.wanted_names = frozenset(needs.span_names)
        # Facts read from a trace's bytes at decision time (see `complete`).
        self.wanted_keys = frozenset(needs.span_keys) | frozenset(needs.span_key_gates)
        self.wants_exception = needs.exception_events

    def _chunk(self, entry: TraceEntry, chunks: dict[int, bytearray], group: Group) -> bytearray:
        chunk = chunks[group.gid] = bytearray()
        group.refs += 1
        if group.res_attrs:
            attrs = entry.res_attrs = entry.res_attrs or {}
            for key, values in group.res_attrs.items():
                attrs.setdefault(key, []).extend(values)
        return chunk

    def add_spans(self, request: Any, now: float, cache: Any, roots: list[TraceEntry],
                  full: list[TraceEntry], late: Late) -> int:
        """Buffer every span of a traces request; returns the number of spans buffered.
        Per (resource, scope) the spans are taken trace by trace, traces in first-seen order (a "run"), as the
        native store takes them: a trace with a root span in the run is appended to `roots` once, one that
        reached max_spans_per_trace to `full`, so both buffers see roots and full traces in the same order
        (readiness and relief follow it). Per span only the trace id, parent id, status (and start/end when a
        trace-duration policy exists) are read; the rest at decision time (`complete`)."""
        traces = self.traces
        cache_get = cache.get
        touched: list[Group] = []
        need_times = self.needs.trace_duration
        max_spans = self.max_spans
        added = 0
        added_bytes = 0
        for rs in request.resource_spans:
            resource = rs.resource
            for ss in rs.scope_spans:
                group = self.groups.intern(resource, rs.schema_url, ss.scope, ss.schema_url)
                touched.append(group)
                gid = group.gid
                runs: dict[bytes, list[Any]] = {}
                for span in ss.spans:
                    run = runs.get(span.trace_id)
                    if run is None:
                        run = runs[span.trace_id] = []
                    run.append(span)
                for trace_id, run in runs.items():
                    entry = traces.get(trace_id)
                    if entry is None:
                        if len(trace_id) != 16 or not any(trace_id):
                            late.invalid_spans += len(run)
                            continue
                        decision = cache_get(trace_id)
                        if decision is not None:
                            if decision.kept:
                                late.spans.extend((group, span.SerializeToString(), not span.parent_span_id,
                                                   decision) for span in run)
                            else:
                                late.dropped_spans += len(run)
                            continue
                        entry = traces[trace_id] = TraceEntry(trace_id, now)
                    chunk = entry.chunks.get(gid)
                    if chunk is None:
                        chunk = self._chunk(entry, entry.chunks, group)
                    root = None
                    for span in run:
                        data = span.SerializeToString()
                        n = len(data)
                        if not span.parent_span_id:
                            root = (gid, len(chunk), n)
                        chunk += CHILD_PREFIX[n] if n < _TABLE else child_prefix(n)
                        chunk += data
                        entry.nbytes += n
                        added_bytes += n
                        if ERROR_CODE in data and span.status.code == ERROR:  # C substring test first
                            entry.error = True
                        if need_times:
                            start = span.start_time_unix_nano
                            end = span.end_time_unix_nano
                            if start < entry.start:
                                entry.start = start
                            if end > entry.end:
                                entry.end = end
                    if root is not None:
                        entry.root_at = now
                        entry.root = root
                        roots.append(entry)
                    before = entry.nspans
                    entry.nspans = before + len(run)
                    added += len(run)
                    if before < max_spans <= entry.nspans:
                        full.append(entry)
        self.groups.forget_unused(touched)
        self.nbytes += added_bytes
        return added

    def complete(self, entry: TraceEntry) -> None:
        """Read the remaining facts from the trace's spans, once, before deciding: named-span durations, the
        attributes policies name, `exception` events (see `read_spans`)."""
        durations, attrs, exception = read_spans(entry.chunks.values(), self.wanted_names, self.wanted_keys,
                                                 self.wants_exception and not entry.exception)
        if durations:
            known = entry.durations
            if known is None:
                entry.durations = durations
            else:
                for name, took in durations.items():
                    if took > known.get(name, -1):
                        known[name] = took
        if attrs:
            if entry.span_attrs is None:
                entry.span_attrs = attrs
            else:
                for key, values in attrs.items():
                    entry.span_attrs.setdefault(key, []).extend(values)
        if exception:
            entry.exception = True

    def add_logs(self, request: Any, now: float, cache: Any, late: Late,
                 passed: list[tuple[Group, bytes, int]]) -> int:
        """Buffer log records that carry a trace id with their trace; others go to `passed`."""
        traces = self.traces
        cache_get = cache.get
        touched: list[Group] = []
        added = 0
        added_bytes = 0
        for group, trace_id, data, severity in self.groups.traced_log_records(request, passed, touched):
            entry = traces.get(trace_id)
            if entry is None:
                decision = cache_get(trace_id)
                if decision is not None:
                    if decision.kept:
                        late.logs.append((group, data))
                    else:
                        late.dropped_logs += 1
                    continue
                entry = traces[trace_id] = TraceEntry(trace_id, now)
            chunks = entry.log_chunks
            if chunks is None:
                chunks = entry.log_chunks = {}
            chunk = chunks.get(group.gid)
            if chunk is None:
                chunk = self._chunk(entry, chunks, group)
            n = len(data)
            chunk += CHILD_PREFIX[n] if n < _TABLE else child_prefix(n)
            chunk += data
            entry.nbytes += n
            entry.nlogs += 1
            added_bytes += n
            added += 1
            if severity > entry.max_severity:
                entry.max_severity = severity
        self.groups.forget_unused(touched)
        self.nbytes += added_bytes
        return added

    def remove(self, entry: TraceEntry) -> None:
        """Take a decided trace out of the buffer (its bytes are handed to the emitter first)."""
        del self.traces[entry.trace_id]
        self.nbytes -= entry.nbytes
        self.groups.release(entry.chunks)
        if entry.log_chunks:
            self.groups.release(entry.log_chunks)
        # Readiness queues may still reference the entry until root_grace: let its bytes go now.
        entry.chunks = {}
        entry.log_chunks = None

    def oldest(self) -> TraceEntry | None:
        for entry in self.traces.values():
            return entry
        return None
