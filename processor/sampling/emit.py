"""Rebuild export requests from decided traces: spans of kept traces go back under the resource and scope they
came with, the root span names the policy that kept the trace (`sampling.policy`; every span when the root
never arrived), and traces kept by probability carry `ot=th:` in each span's tracestate."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span

from processor.sampling.buffer import Group, TraceEntry
from processor.sampling.consistent import with_threshold
from processor.sampling.policies.policyset import Decision
from processor.sampling.wire import child_prefix, field

POLICY_ATTRIBUTE = "sampling.policy"


def _annotate(span: Span, decision: Decision, mark: bool) -> None:
    if decision.th is not None:
        span.trace_state = with_threshold(span.trace_state, decision.th)
    if mark:
        kv = span.attributes.add()
        kv.key = POLICY_ATTRIBUTE
        kv.value.string_value = decision.policy


class Outbox:
    """Decided-and-kept data waiting for the next return from the stage."""

    def __init__(self) -> None:
        self.spans: dict[Group, list[bytes]] = {}
        self.logs: dict[Group, list[bytes]] = {}
        self.nspans = 0
        self.nlogs = 0
        self._marks: dict[str, bytes] = {}

    def add_trace(self, entry: TraceEntry, decision: Decision, groups: dict[int, Group]) -> None:
        root = entry.root
        if root is not None and decision.th is None:
            # Common case: only the root changes. Appending a field to a serialized message merges it, so the
            # root gets its `sampling.policy` attribute by splicing bytes; other spans pass untouched.
            root_gid, at, n = root
            for gid, chunk in entry.chunks.items():
                if gid == root_gid:
                    prefix = len(child_prefix(n))
                    body = chunk[at + prefix:at + prefix + n] + self.mark(decision)
                    chunk = chunk[:at] + child_prefix(len(body)) + body + chunk[at + prefix + n:]
                self.spans.setdefault(groups[gid], []).append(chunk)
        else:
            for gid, chunk in entry.chunks.items():
                scope_spans = ScopeSpans.FromString(bytes(chunk))  # a chunk is a run of field-2 entries
                for span in scope_spans.spans:
                    _annotate(span, decision, root is None or not span.parent_span_id)
                self.spans.setdefault(groups[gid], []).append(scope_spans.SerializeToString())
        self.nspans += entry.nspans
        if entry.log_chunks:
            for gid, chunk in entry.log_chunks.items():
                self.logs.setdefault(groups[gid], []).append(bytes(chunk))
            self.nlogs += entry.nlogs

    def add_serialized(self, spans: list[tuple[int, bytes]], nspans: int, logs: list[tuple[int, bytes]],
                       nlogs: int, groups: dict[int, Group]) -> None:
        """Kept traces the store serialized itself (`TraceStore.emit_kept`): their chunks joined per group."""
        for gid, data in spans:
            self.spans.setdefault(groups[gid], []).append(data)
        for gid, data in logs:
            self.logs.setdefault(groups[gid], []).append(data)
        self.nspans += nspans
        self.nlogs += nlogs

    def checkpoint(self) -> tuple[dict[Group, int], dict[Group, int], int, int]:
        """What the outbox holds now, for `rollback`: a batch whose decisions are not recorded must not send
        anything (its traces stay buffered and are sent once, when a later batch decides them)."""
        return ({g: len(c) for g, c in self.spans.items()}, {g: len(c) for g, c in self.logs.items()},
                self.nspans, self.nlogs)

    def rollback(self, mark: tuple[dict[Group, int], dict[Group, int], int, int]) -> None:
        spans, logs, self.nspans, self.nlogs = mark
        for held, kept in ((self.spans, spans), (self.logs, logs)):
            for group in list(held):
                n = kept.get(group, 0)
                if n:
                    del held[group][n:]
                else:
                    del held[group]

    def mark(self, decision: Decision) -> bytes:
        """The serialized `sampling.policy` attribute (Span field 9) for a deciding policy, cached."""
        marks = self._marks
        mark = marks.get(decision.policy)
        if mark is None:
            kv = KeyValue(key=POLICY_ATTRIBUTE, value=AnyValue(string_value=decision.policy))
            mark = marks[decision.policy] = field(9, kv.SerializeToString())
        return mark

    def threshold_state(self, decision: Decision) -> bytes | None:
        """The serialized trace_state (Span field 3) a span without one gets when its trace was kept by
        probability (`with_threshold` of an empty state); None for other decisions."""
        if decision.th is None:
            return None
        return field(3, with_threshold("", decision.th).encode())

    def add_late_span(self, group: Group, data: bytes, is_root: bool, decision: Decision) -> None:
        if decision.th is not None or is_root:
            span = Span.FromString(data)
            _annotate(span, decision, is_root)
            data = span.SerializeToString()
        self.spans.setdefault(group, []).append(child_prefix(len(data)) + data)
        self.nspans += 1

    def add_log(self, group: Group, data: bytes) -> None:
        self.logs.setdefault(group, []).append(child_prefix(len(data)) + data)
        self.nlogs += 1

    def take_traces(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(raw) for raw in self.take_trace_bytes()]

    def take_trace_bytes(self) -> list[bytes]:
        return self.take_counted_trace_bytes()[0]

    def take_counted_trace_bytes(self) -> tuple[list[bytes], list[int]]:
        """The held spans as one serialized request, with its span count (known here, so the exporter need
        not parse the request to count it: `Emitted.trace_spans`)."""
        if not self.spans:
            return [], []
        raw, nspans = _payload(self.spans), self.nspans
        self.spans = {}
        self.nspans = 0
        return [raw], [nspans]

    def take_logs(self) -> list[ExportLogsServiceRequest]:
        if not self.logs:
            return []
        request = ExportLogsServiceRequest.FromString(_payload(self.logs))
        self.logs = {}
        self.nlogs = 0
        return [request]


def _payload(parts: dict[Group, list[Any]]) -> bytes:
    """Request bytes: one ResourceX per resource, one ScopeX per (resource, scope), children concatenated."""
    by_resource: dict[bytes, list[bytes]] = {}
    for group, chunks in parts.items():
        by_resource.setdefault(group.resource_field, []).append(field(2, group.scope_field + b"".join(chunks)))
    return b"".join(field(1, resource + b"".join(scopes)) for resource, scopes in by_resource.items())
