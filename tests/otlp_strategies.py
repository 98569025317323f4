"""Hypothesis strategies for random OTLP values, shared by the native-vs-Python differential tests (each test
picks the strings, numbers and keys that exercise its own stage)."""

from __future__ import annotations

from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

ALL_INTS = st.integers(-(2**63), 2**63 - 1)


def any_values(depth: int = 1, *, strings: st.SearchStrategy[str] | None = None,
               ints: st.SearchStrategy[int] = ALL_INTS,
               floats: st.SearchStrategy[float] | None = None,
               keys: st.SearchStrategy[str] | None = None, binary_size: int = 12,
               list_size: int = 3) -> st.SearchStrategy[AnyValue]:
    """Every AnyValue kind (and the empty one), nested `depth` levels in arrays and kvlists."""
    leaves = st.one_of(
        st.builds(lambda v: AnyValue(string_value=v), strings if strings is not None else st.text(max_size=12)),
        st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=binary_size)),
        st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
        st.builds(lambda v: AnyValue(int_value=v), ints),
        st.builds(lambda v: AnyValue(double_value=v), floats if floats is not None else st.floats(allow_nan=False)),
        st.just(AnyValue()),
    )
    if depth == 0:
        return leaves
    inner = any_values(depth - 1, strings=strings, ints=ints, floats=floats, keys=keys,
                       binary_size=binary_size, list_size=list_size)
    kv_keys = keys if keys is not None else st.sampled_from(["a", "b", ""])
    return st.one_of(
        leaves,
        st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=list_size)),
        st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
                  st.lists(st.builds(KeyValue, key=kv_keys, value=inner), max_size=list_size)),
    )
