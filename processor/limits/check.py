"""What in a traces request is over the limits or has invalid ids: counts only, no changes.

`scan_bytes` is the hot path (one C pass, `processor/native/_limits.c`); `scan_message` is the pure-Python
reference with the same semantics, used when the native module is not built or does not understand the bytes.
A span with invalid ids is counted once, under the first failing id (trace, span, parent), and nothing else of
it is counted (it is refused whole). Of a valid span only the first N attributes / events / links are kept, and
only kept items are looked into further (value lengths, event and link attributes).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from processor.limits.settings import Limits
from processor.native import load as load_native
from processor.stages.base import TracesRequest

_native = load_native("limits")


Schema = tuple[tuple[tuple[int, int, int], ...], ...]


def schema_table(descriptor: Any) -> tuple[Schema, dict[str, int]]:
    """`_limits.set_schema`'s table of a message and every message below it (index 0 is `descriptor`): per
    field (number, kind, child index), kind 1 string (UTF-8 checked), 2 message, 3 packed repeated scalar
    (left to upb); bytes and single scalars are not listed (given length-delimited, upb skips them). Also
    each message's index by full name."""
    order: list[Any] = [descriptor]
    index = {descriptor.full_name: 0}
    rows: list[tuple[tuple[int, int, int], ...]] = []
    at = 0
    while at < len(order):
        fields = []
        for f in order[at].fields:
            if f.type == f.TYPE_MESSAGE:
                child = f.message_type
                if child.full_name not in index:
                    index[child.full_name] = len(order)
                    order.append(child)
                fields.append((f.number, 2, index[child.full_name]))
            elif f.type == f.TYPE_STRING:
                fields.append((f.number, 1, -1))
            elif f.type != f.TYPE_BYTES and _repeated(f):
                fields.append((f.number, 3, -1))
        rows.append(tuple(fields))
        at += 1
    return tuple(rows), index


def _repeated(field: Any) -> bool:
    found = getattr(field, "is_repeated", None)  # protobuf >= 5.29; `label` before
    return bool(found) if found is not None else field.label == field.LABEL_REPEATED


def _keyvalue_index(index: dict[str, int]) -> int:
    """KeyValue's index when it has the field numbers `_limits.c`'s shortcut reads (key 1, value 2; AnyValue's
    string 1, bool 2, int 3, double 4), else -1 (the generic walk only)."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    kv = {f.name: (f.number, f.type) for f in KeyValue.DESCRIPTOR.fields}
    av = {f.name: (f.number, f.type) for f in AnyValue.DESCRIPTOR.fields}
    F = KeyValue.DESCRIPTOR.fields[0]
    fits = (kv.get("key") == (1, F.TYPE_STRING) and kv.get("value") == (2, F.TYPE_MESSAGE)
            and av.get("string_value") == (1, F.TYPE_STRING) and av.get("bool_value") == (2, F.TYPE_BOOL)
            and av.get("int_value") == (3, F.TYPE_INT64) and av.get("double_value") == (4, F.TYPE_DOUBLE))
    return index.get(KeyValue.DESCRIPTOR.full_name, -1) if fits else -1


if _native is not None:
    _table, _index = schema_table(TracesRequest.DESCRIPTOR)
    _native.set_schema(_table, _keyvalue_index(_index))


class Counts(NamedTuple):
    """Field order is `_limits.scan`'s tuple order."""

    spans: int = 0
    bad_trace_id: int = 0
    bad_span_id: int = 0
    bad_parent_id: int = 0
    end_before_start: int = 0
    too_old: int = 0
    in_future: int = 0
    span_attributes: int = 0
    event_attributes: int = 0
    link_attributes: int = 0
    events: int = 0
    links: int = 0
    resource_attributes: int = 0
    scope_attributes: int = 0
    values: int = 0

    def __add__(self, other: tuple) -> Counts:  # type: ignore[override]
        """Field by field (so `sum(counts, Counts())` totals several requests)."""
        return Counts(*(a + b for a, b in zip(self, other, strict=True)))

    def refused(self) -> int:
        return self.bad_trace_id + self.bad_span_id + self.bad_parent_id

    def needs_fix(self) -> bool:
        """True when the request must change (spans refused or something cut); timestamps are only counted."""
        return any(self[1:4]) or any(self[7:])


REFUSAL_FIELDS = ("bad_trace_id", "bad_span_id", "bad_parent_id")
TIMESTAMP_FIELDS = ("end_before_start", "too_old", "in_future")
TRUNCATION_FIELDS = ("span_attributes", "event_attributes", "link_attributes", "events", "links",
                     "resource_attributes", "scope_attributes", "values")


def native_available() -> bool:
    return _native is not None


def scan_bytes(raw: bytes, limits: Limits, window: tuple[int, int]) -> Counts | None:
    """The C scan, or None when it is not built or meets bytes it does not fully understand."""
    if _native is None:
        return None
    found = _native.scan(raw, limits.native_tuple(), window[0], window[1])
    return None if found is None else Counts(*found)


def id_problem(span: Any) -> str | None:
    """The first failing id of a span (the Counts field name), or None when its ids are valid."""
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "bad_trace_id"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "bad_span_id"
    if len(span.parent_span_id) not in (0, 8):
        return "bad_parent_id"
    return None


def long_values(value: Any, max_len: int) -> int:
    """String and bytes values (nested in arrays and kvlists too) longer than max_len bytes."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return int(len(value.string_value.encode()) > max_len)
    if kind == "bytes_value":
        return int(len(value.bytes_value) > max_len)
    if kind == "array_value":
        return sum(long_values(v, max_len) for v in value.array_value.values)
    if kind == "kvlist_value":
        return sum(long_values(kv.value, max_len) for kv in value.kvlist_value.values)
    return 0


def attrs_over(attributes: Any, max_count: int, max_len: int) -> tuple[int, int]:
    """(attributes beyond max_count, long values among the kept ones)."""
    kept = attributes[:max_count]
    return len(attributes) - len(kept), sum(long_values(kv.value, max_len) for kv in kept)


def scan_message(request: TracesRequest, limits: Limits, window: tuple[int, int]) -> Counts:
    """The reference: same counts as the C scan, on a parsed request."""
    c = dict.fromkeys(Counts._fields, 0)
    max_len = limits.max_attribute_value_length
    low, high = window
    for rs in request.resource_spans:
        dropped, long = attrs_over(rs.resource.attributes, limits.max_attributes_per_resource, max_len)
        c["resource_attributes"] += dropped
        c["values"] += long
        for ss in rs.scope_spans:
            dropped, long = attrs_over(ss.scope.attributes, limits.max_attributes_per_resource, max_len)
            c["scope_attributes"] += dropped
            c["values"] += long
            for span in ss.spans:
                c["spans"] += 1
                problem = id_problem(span)
                if problem is not None:
                    c[problem] += 1
                    continue
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                c["end_before_start"] += end < start
                c["too_old"] += start < low
                c["in_future"] += start > high or end > high
                dropped, long = attrs_over(span.attributes, limits.max_attributes_per_span, max_len)
                c["span_attributes"] += dropped
                c["values"] += long
                for kind, items, max_items, max_attrs in (
                        ("event", span.events, limits.max_events_per_span, limits.max_attributes_per_event),
                        ("link", span.links, limits.max_links_per_span, limits.max_attributes_per_link)):
                    kept = items[:max_items]
                    c[kind + "s"] += len(items) - len(kept)
                    for item in kept:
                        dropped, long = attrs_over(item.attributes, max_attrs, max_len)
                        c[kind + "_attributes"] += dropped
                        c["values"] += long
    return Counts(**c)
