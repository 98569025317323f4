"""Reading facts straight from serialized spans must agree with parsing them (property-based)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span

from processor.otlp_values import set_value
from processor.sampling.buffer import _duration_after
from processor.sampling.policies.attribute import encoded_key
from processor.sampling.wire import CHILD_PREFIX, field, span_attribute_values, split_children

KEYS = ("reco.strategy", "k", "url.path", "reco.fallback")
values = st.one_of(st.text(max_size=300), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                   st.floats(allow_nan=False))



span_attrs = st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=8)


@settings(max_examples=80, deadline=None)
@given(spans=st.lists(st.tuples(span_attrs, span_attrs, st.integers(0, 5), st.text(max_size=20)),
                      min_size=1, max_size=5))
def test_span_attribute_values_match_the_parsed_spans(spans) -> None:  # noqa: ANN001
    chunk = bytearray()
    expected: dict[str, list] = {k: [] for k in KEYS}
    for attrs, event_attrs, kind, name in spans:
        span = Span(name=name, kind=kind, trace_id=b"\x4a" * 16, span_id=b"\x0a\x0d" * 4,
                    start_time_unix_nano=5, end_time_unix_nano=9)
        for key, value in attrs:
            set_value(span.attributes.add(key=key).value, value)
            expected[key].append(value)
        event = span.events.add(name="e")
        for key, value in event_attrs:  # event attributes must not count as span attributes
            set_value(event.attributes.add(key=key).value, value)
        data = span.SerializeToString()
        chunk += CHILD_PREFIX[len(data)] + data if len(data) < len(CHILD_PREFIX) else field(2, data)
    for key in KEYS:
        assert span_attribute_values(chunk, encoded_key(key)) == expected[key]
    assert len(split_children(bytes(chunk))) == len(spans)


@settings(max_examples=60, deadline=None)
@given(kind=st.integers(0, 5), start=st.integers(1, 2**63), took=st.integers(0, 2**40), name=st.text(max_size=30))
def test_named_span_duration_read_from_bytes(kind: int, start: int, took: int, name: str) -> None:
    span = Span(name=name or "n", kind=kind, start_time_unix_nano=start, end_time_unix_nano=start + took,
                trace_id=b"\1" * 16, span_id=b"\2" * 8, parent_span_id=b"\3" * 8)
    data = ScopeSpans(spans=[span]).SerializeToString()
    pattern = field(5, (name or "n").encode())
    assert _duration_after(data, data.find(pattern) + len(pattern)) == took
