"""The Python trace buffer reads the facts policies need as the protobuf parser does (property-based), also
when a KeyValue carries unknown fields (upb keeps them in place, so byte patterns would miss the value)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from processor.otlp_values import set_value
from processor.sampling.buffer import TraceBuffer, TraceEntry
from processor.sampling.policies.base import Needs
from processor.sampling.wire import CHILD_PREFIX, field, split_children

KEYS = ("reco.strategy", "k", "url.path", "reco.fallback")
values = st.one_of(st.text(max_size=300), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                   st.floats(allow_nan=False))
span_attrs = st.lists(st.tuples(st.sampled_from(KEYS), values, st.booleans()), max_size=8)
UNKNOWN = field(7, b"odd") + b"\x40\x05"  # an unknown length-delimited field and an unknown varint


def kv_bytes(key: str, value: object, odd: bool) -> bytes:
    kv = KeyValue(key=key)
    set_value(kv.value, value)
    if not odd:
        return kv.SerializeToString()
    # the unknown fields between key and value, where a producer may well put them
    return field(1, key.encode()) + UNKNOWN + field(2, kv.value.SerializeToString())


@settings(max_examples=80, deadline=None)
@given(spans=st.lists(st.tuples(span_attrs, span_attrs, st.integers(0, 5), st.integers(0, 2**40)),
                      min_size=1, max_size=5))
def test_complete_reads_values_as_the_parser_does(spans) -> None:  # noqa: ANN001
    buffer = TraceBuffer(Needs(span_keys=set(KEYS), span_key_gates=dict.fromkeys(KEYS),
                               span_names={"n"}, exception_events=True), 100)
    entry = TraceEntry(b"\x4a" * 16, 0.0)
    chunk = bytearray()
    expected: dict[str, list] = {}
    longest = -1
    for attrs, event_attrs, kind, took in spans:
        span = Span(name="n", kind=kind, trace_id=b"\x4a" * 16, span_id=b"\x0a\x0d" * 4,
                    start_time_unix_nano=5, end_time_unix_nano=5 + took)
        event = span.events.add(name="e")
        for key, value, _odd in event_attrs:  # event attributes must not count as span attributes
            set_value(event.attributes.add(key=key).value, value)
        data = span.SerializeToString() + b"".join(field(9, kv_bytes(k, v, odd)) for k, v, odd in attrs)
        parsed = Span.FromString(data)  # what the buffer holds: the parser's own encoding
        data = parsed.SerializeToString()
        for kv in parsed.attributes:
            expected.setdefault(kv.key, []).append(getattr(kv.value, kv.value.WhichOneof("value")))
        longest = max(longest, took)
        chunk += CHILD_PREFIX[len(data)] + data if len(data) < len(CHILD_PREFIX) else field(2, data)
    entry.chunks = {0: chunk}
    buffer.complete(entry)
    assert (entry.span_attrs or {}) == expected
    assert entry.durations == {"n": longest}
    assert not entry.exception
    assert len(split_children(bytes(chunk))) == len(spans)
