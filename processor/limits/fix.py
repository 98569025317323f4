"""Brings a request within the limits (the rare path, on parsed messages): spans with invalid ids removed,
attributes / events / links beyond the limits dropped (the first N kept, as the OTel SDK does) with the
message's `dropped_*_count` raised by as many, and long string / bytes values cut (strings at a UTF-8
character boundary). Counting is `check.py`'s job; this only changes the request."""

from __future__ import annotations

from typing import Any

from processor.limits.check import id_problem
from processor.limits.settings import Limits


def utf8_cut(text: str, max_len: int) -> str:
    """`text` cut to at most max_len UTF-8 bytes without splitting a character."""
    raw = text.encode()
    if len(raw) <= max_len:
        return text
    cut = max_len
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
    return raw[:cut].decode()


def cut_value(value: Any, max_len: int) -> None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        if len(value.string_value) * 4 > max_len:  # cheap test first: a str of n chars is at most 4n bytes
            value.string_value = utf8_cut(value.string_value, max_len)
    elif kind == "bytes_value":
        if len(value.bytes_value) > max_len:
            value.bytes_value = value.bytes_value[:max_len]
    elif kind == "array_value":
        for v in value.array_value.values:
            cut_value(v, max_len)
    elif kind == "kvlist_value":
        for kv in value.kvlist_value.values:
            cut_value(kv.value, max_len)


def drop_attributes(owner: Any, max_count: int) -> int:
    """Keeps the first max_count attributes of `owner`, raising its dropped count; returns how many went."""
    attributes = owner.attributes
    extra = len(attributes) - max_count
    if extra <= 0:
        return 0
    del attributes[max_count:]
    owner.dropped_attributes_count = min(owner.dropped_attributes_count + extra, (1 << 32) - 1)
    return extra


def fix_attributes(owner: Any, max_count: int, max_len: int) -> None:
    """Keeps the first max_count attributes of `owner` (raising its dropped count) and cuts long values."""
    drop_attributes(owner, max_count)
    for kv in owner.attributes:
        cut_value(kv.value, max_len)


def fix_span(span: Any, limits: Limits) -> None:
    max_len = limits.max_attribute_value_length
    fix_attributes(span, limits.max_attributes_per_span, max_len)
    extra = len(span.events) - limits.max_events_per_span
    if extra > 0:
        del span.events[limits.max_events_per_span:]
        span.dropped_events_count = min(span.dropped_events_count + extra, (1 << 32) - 1)
    extra = len(span.links) - limits.max_links_per_span
    if extra > 0:
        del span.links[limits.max_links_per_span:]
        span.dropped_links_count = min(span.dropped_links_count + extra, (1 << 32) - 1)
    for event in span.events:
        fix_attributes(event, limits.max_attributes_per_event, max_len)
    for link in span.links:
        fix_attributes(link, limits.max_attributes_per_link, max_len)


def fix_request(request: Any, limits: Limits) -> None:
    """Changes `request` in place; ResourceSpans / ScopeSpans left empty by refused spans are removed."""
    max_len = limits.max_attribute_value_length
    for ri in range(len(request.resource_spans) - 1, -1, -1):
        rs = request.resource_spans[ri]
        had_spans = False
        fix_attributes(rs.resource, limits.max_attributes_per_resource, max_len)
        for si in range(len(rs.scope_spans) - 1, -1, -1):
            ss = rs.scope_spans[si]
            fix_attributes(ss.scope, limits.max_attributes_per_resource, max_len)
            spans = ss.spans
            had_spans |= len(spans) > 0
            bad = [i for i, span in enumerate(spans) if id_problem(span) is not None]
            for i in reversed(bad):
                del spans[i]
            for span in spans:
                fix_span(span, limits)
            if bad and not spans:
                del rs.scope_spans[si]
        if had_spans and not rs.scope_spans:
            del request.resource_spans[ri]
