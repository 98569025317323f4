"""Hand-built protobuf framing, so buffered spans stay serialized bytes and are rebuilt into requests by
concatenation (one parse per emitted request instead of one message per span).

ResourceSpans/ResourceLogs and ScopeSpans/ScopeLogs share their layout: field 1 = resource/scope,
field 2 = the repeated children, field 3 = schema_url. An ExportTrace/LogsServiceRequest is field 1 repeated.
"""

from __future__ import annotations

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
