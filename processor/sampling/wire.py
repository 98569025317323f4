"""Hand-built protobuf framing, so buffered spans stay serialized bytes and are rebuilt into requests by
concatenation (one parse per emitted request instead of one message per span).

ResourceSpans/ResourceLogs and ScopeSpans/ScopeLogs share their layout: field 1 = resource/scope,
field 2 = the repeated children, field 3 = schema_url. An ExportTrace/LogsServiceRequest is field 1 repeated.
"""

from __future__ import annotations

import struct

from processor.otlp_values import varint


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


_TABLE_LIMIT = 1 << 14
# CHILD_PREFIX[n]: the tag + length of a field-2 child of n bytes (most spans and log records are < 16 KiB).
CHILD_PREFIX: list[bytes] = [b"\x12" + varint(n) for n in range(_TABLE_LIMIT)]


def child_prefix(n: int) -> bytes:
    return CHILD_PREFIX[n] if n < _TABLE_LIMIT else b"\x12" + varint(n)


def split_children(chunk: bytes) -> list[bytes]:
    """The serialized children of a chunk made of field-2 entries (inverse of prefix + payload appends)."""
    out: list[bytes] = []
    i, end = 0, len(chunk)
    while i < end:
        i += 1  # tag 0x12
        n = shift = 0
        while True:
            b = chunk[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out.append(bytes(chunk[i:i + n]))
        i += n
    return out


def read_varint(buf: bytes | bytearray, at: int) -> tuple[int, int]:
    """(value, position after it)."""
    value = shift = 0
    while True:
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, at


def any_value_at(buf: bytes | bytearray, at: int, end: int) -> str | bool | int | float | None:
    """Decode a serialized AnyValue occupying buf[at:end] (string, bool, int, double; others None)."""
    if at >= end:
        return None
    tag = buf[at]
    if tag == 0x0A:
        n, at = read_varint(buf, at + 1)
        return bytes(buf[at:at + n]).decode("utf-8", "replace")
    if tag == 0x10:
        return read_varint(buf, at + 1)[0] != 0
    if tag == 0x18:
        value = read_varint(buf, at + 1)[0]
        return value - (1 << 64) if value >= 1 << 63 else value
    if tag == 0x21:
        return struct.unpack_from("<d", buf, at + 1)[0]
    return None


SPAN_ATTRIBUTE_TAG = 0x4A  # Span.attributes (field 9)


def span_attribute_values(chunk: bytes | bytearray, pattern: bytes) -> list[str | bool | int | float | None]:
    """Values of span attributes whose KeyValue starts with `pattern` (key field + value tag), read straight
    from a chunk of serialized spans. An occurrence counts only if it is framed as a Span.attributes entry
    (tag 0x4A + the KeyValue's exact length), so event/link attributes and look-alike bytes are skipped."""
    values: list[str | bool | int | float | None] = []
    at = chunk.find(pattern)
    while at >= 0:
        # Look-alike bytes (inside a string value, say) may end the chunk or frame nonsense: skip them.
        try:
            vlen, value_at = read_varint(chunk, at + len(pattern))
            kv_end = value_at + vlen
            frame = bytes([SPAN_ATTRIBUTE_TAG]) + varint(kv_end - at)
            if at >= len(frame) and chunk[at - len(frame):at] == frame and kv_end <= len(chunk):
                values.append(any_value_at(chunk, value_at, kv_end))
        except (IndexError, struct.error):
            pass
        at = chunk.find(pattern, at + 1)
    return values
