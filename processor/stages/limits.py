"""Limits stage: runs first, so no later stage (nor the sampling buffer) holds a span beyond the OTel SDK's span
limits or a span whose ids are invalid.

Config: `{type: limits, max_attributes_per_span: 128, max_attribute_value_length: 64KiB, max_events_per_span,
max_links_per_span, max_attributes_per_event, max_attributes_per_link, max_attributes_per_resource,
max_attributes_per_log_record, max_age: 720h, max_future: 1h}` (see processor/limits/settings.py).
- invalid trace id (not 16 bytes or all zero), span id (not 8 bytes or all zero) or parent span id (not empty
  and not 8 bytes): the span is refused alone (OTLP partial success), counted by reason.
- over-limit attributes / events / links: the first N are kept and `dropped_*_count` raised; long string and
  bytes values are cut. Counted in `recohop_limits_truncated_total{what}`.
- end before start, start before now - max_age, start or end after now + max_future: passed on unchanged and
  counted (as otelcol and Refinery do: clocks are wrong more often than data is worthless; span metrics
  count a negative duration as zero).
The common request is checked by one C pass and passed on as the very same bytes object. That pass also
vouches that the bytes parse (`admit_trace_bytes`), so when this stage comes first the receiver does not parse
the request at all; it runs on the receiver thread before any lock, without the GIL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import Counter

from processor.config_node import Node
from processor.limits.check import (
    REFUSAL_FIELDS,
    TIMESTAMP_FIELDS,
    TRUNCATION_FIELDS,
    Counts,
    scan_bytes,
    scan_message,
)
from processor.limits.fix import drop_attributes, fix_request
from processor.limits.settings import Limits, read_limits
from processor.stages.base import LogsRequest, Stage, StageContext, TracesRequest

REFUSAL_REASONS = {
    "bad_trace_id": ("invalid_trace_id", "spans with an invalid trace id (must be 16 bytes, not all zero)"),
    "bad_span_id": ("invalid_span_id", "spans with an invalid span id (must be 8 bytes, not all zero)"),
    "bad_parent_id": ("invalid_parent_span_id", "spans with an invalid parent span id (must be empty or 8 bytes)"),
}


class LimitsStage(Stage):
    name = "limits"
    mutates = True
    takes_trace_bytes = True

    def __init__(self, limits: Limits, ctx: StageContext, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.limits = limits
        self.ctx = ctx
        self.clock_ns = clock_ns
        refused = Counter("recohop_limits_refused", "Items refused by the limits stage, by reason",
                          ["signal", "reason"], registry=ctx.registry)
        timestamps = Counter("recohop_limits_timestamps", "Spans passed on with implausible times, by reason",
                             ["reason"], registry=ctx.registry)
        truncated = Counter("recohop_limits_truncated",
                            "Items dropped (attributes, events, links) or values cut by the limits stage",
                            ["what"], registry=ctx.registry)
        # Pre-created so every series exists (at 0) before the first hit.
        self._refused = {f: refused.labels("spans", REFUSAL_REASONS[f][0]) for f in REFUSAL_FIELDS}
        self._timestamps = {f: timestamps.labels(f) for f in TIMESTAMP_FIELDS}
        self._truncated = {f: truncated.labels(f) for f in (*TRUNCATION_FIELDS, "log_attributes")}
        # Per receiver thread: the request `admit_trace_bytes` scanned, and its counts (used once).
        self._admitted = threading.local()

    # -- traces -----------------------------------------------------------------------------------------------

    def on_traces(self, request: TracesRequest) -> list[TracesRequest]:
        return [TracesRequest.FromString(raw) for raw in self.on_trace_bytes(request.SerializeToString())]

    def admit_trace_bytes(self, raw: bytes) -> int | None:
        """The C scan, which also vouches that the bytes parse: the span count, or None (the receiver parses)."""
        counts = scan_bytes(raw, self.limits, self.limits.time_window(self.clock_ns()))
        if counts is None:
            return None
        self._admitted.scanned = (raw, counts)
        return counts.spans

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        scanned = getattr(self._admitted, "scanned", None)
        if scanned is not None and scanned[0] is raw:  # this thread's receiver just scanned these bytes
            self._admitted.scanned = None
            counts: Counts | None = scanned[1]
        else:
            counts = scan_bytes(raw, self.limits, self.limits.time_window(self.clock_ns()))
        request = None
        if counts is None:
            request = TracesRequest.FromString(raw)
            counts = scan_message(request, self.limits, self.limits.time_window(self.clock_ns()))
        self._count(counts)
        if not counts.needs_fix():
            return [raw]
        if request is None:
            request = TracesRequest.FromString(raw)
        fix_request(request, self.limits)
        if counts.spans and counts.refused() == counts.spans:
            return []
        return [request.SerializeToString()]

    def _count(self, counts: Counts) -> None:
        for f in REFUSAL_FIELDS:
            n = getattr(counts, f)
            if n:
                self._refused[f].inc(n)
                self.ctx.reject(n, REFUSAL_REASONS[f][1])
        for f in TIMESTAMP_FIELDS:
            n = getattr(counts, f)
            if n:
                self._timestamps[f].inc(n)
        for f in TRUNCATION_FIELDS:
            n = getattr(counts, f)
            if n:
                self._truncated[f].inc(n)

    # -- logs: attribute counts only (what is cheap on parsed records: no value walk, no id or time checks) ---

    def on_logs(self, request: LogsRequest) -> list[LogsRequest]:
        lim = self.limits
        dropped = 0
        for rl in request.resource_logs:
            extra = drop_attributes(rl.resource, lim.max_attributes_per_resource)
            if extra:
                self._truncated["resource_attributes"].inc(extra)
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    if len(record.attributes) > lim.max_attributes_per_log_record:
                        dropped += drop_attributes(record, lim.max_attributes_per_log_record)
        if dropped:
            self._truncated["log_attributes"].inc(dropped)
        return [request]


def build(node: Node, ctx: StageContext) -> Stage:
    return LimitsStage(read_limits(node), ctx)
