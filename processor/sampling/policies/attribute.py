"""`attribute`: a span or resource attribute equal to a value (string, bool, number), one of `values`,
matching a `regex`, or within a numeric `min`/`max` range — e.g. `reco.fallback == true`.

Only the keys named here are extracted per span (see `Needs`), once, when the span arrives.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from processor.config_node import Node
from processor.sampling.policies.base import Needs, Policy, TraceView
from processor.sampling.policies.batch import UNKNOWN_CLASS, Batch, BatchFacts, BatchLayout, some_in_python

Test = Callable[[Any], bool]
SCOPES = ("any", "span", "resource")


class Attribute(Policy):
    kind = "attribute"

    def __init__(self, name: str, keys: list[str], scope: str, test: Test,
                 exact: list[str | bool] | None = None) -> None:
        super().__init__(name)
        self.keys = keys
        self.scope = scope
        self.test = test
        self.exact = exact  # the string/bool values of an equality test, for byte-level triggers

    def add_needs(self, needs: Needs) -> None:
        if self.scope in ("any", "span"):
            needs.span_keys.update(self.keys)
            for key in self.keys:
                gates = needs.span_key_gates.get(key, set())
                if self.exact is None or gates is None:
                    needs.span_key_gates[key] = None
                else:
                    needs.span_key_gates[key] = gates | {encoded_pair(key, v) for v in self.exact}
        if self.scope in ("any", "resource"):
            needs.resource_keys.update(self.keys)

    def matches(self, trace: TraceView, now: float) -> bool:
        for found in (trace.span_attrs if self.scope != "resource" else None,
                      trace.res_attrs if self.scope != "span" else None):
            if not found:
                continue
            for key in self.keys:
                for value in found.get(key, ()):
                    if self.test(value):
                        return True
        return False

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        """Span side from the store's bits: exact values by their hit bits, regex/numeric tests by this
        policy's class bit (answered per distinct value at intake); traces with values only Python can judge
        (a read-all key present, an unknown class, resource attributes) are asked per trace."""
        span_side = self.scope in ("any", "span")
        res_side = self.scope in ("any", "resource")
        fast: Batch | None = None
        present = 0
        unknown = False
        if span_side:
            bits = [layout.hit_bit.get((key, encoded_pair(key, v))) for key in self.keys for v in (self.exact or ())]
            class_bit = layout.class_bit.get(id(self)) if layout.classifies else None
            if self.exact is not None and all(bit is not None for bit in bits):
                mask = np.uint64(sum(1 << bit for bit in bits if bit is not None))
                fast = lambda f, rows: (f.recs["hits"][rows] & mask) != 0  # noqa: E731
            elif class_bit is not None:
                cmask = np.uint64(1 << class_bit)
                fast = lambda f, rows: (f.recs["classes"][rows] & cmask) != 0  # noqa: E731
                unknown = True
            else:
                for key in self.keys:
                    bit = layout.present_bit.get(key)
                    if bit is not None:
                        present |= 1 << bit
        pmask = np.uint64(present)

        def ask(f: BatchFacts, rows: np.ndarray) -> np.ndarray:
            need = (f.recs["present"][rows] & pmask) != 0 if present else np.zeros(len(rows), dtype=bool)
            if unknown:
                need |= (f.recs["classes"][rows] & np.uint64(UNKNOWN_CLASS)) != 0
            if res_side:
                need |= f.has_res[rows]
            return need
        return some_in_python(self, now, ask, fast)


def encoded_key(key: str) -> bytes:
    """How upb serializes the start of a KeyValue with this key (field 1, then the value's field 2 tag)."""
    return KeyValue(key=key).SerializeToString() + b"\x12"


def encoded_pair(key: str, value: str | bool) -> bytes:
    """The canonical serialized KeyValue for a string or bool value."""
    any_value = AnyValue(bool_value=value) if isinstance(value, bool) else AnyValue(string_value=value)
    return KeyValue(key=key, value=any_value).SerializeToString()


def _exact(node: Node) -> list[str | bool] | None:
    """String/bool values of an equality test (numbers may be encoded as int or double: no byte trigger)."""
    values = [node.data["value"]] if "value" in node.data else node.data.get("values")
    if not isinstance(values, list) or not all(isinstance(v, (str, bool)) for v in values):
        return None
    return values


def _same(expected: Any) -> Test:
    # bool is an int in Python: never let `true` match 1, nor 1 match `true`.
    if isinstance(expected, bool):
        return lambda v: isinstance(v, bool) and v is expected
    if isinstance(expected, (int, float)):
        return lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and v == expected
    return lambda v: isinstance(v, str) and v == expected


def _test(node: Node) -> Test:
    given = [k for k in ("value", "values", "regex", "min", "max") if node.has(k)]
    if not given:
        raise node.error("value", "one of value, values, regex or min/max")
    if len(given) > 1 and set(given) != {"min", "max"}:
        raise node.error(given[1], f"only one of value, values, regex, min/max (also has '{given[0]}')")
    if "value" in given:
        value = node.raw("value")
        if not isinstance(value, (str, bool, int, float)):
            raise node.error("value", "a string, boolean or number", value)
        return _same(value)
    if "values" in given:
        values = node.list("values")
        for i, value in enumerate(values):
            if not isinstance(value, (str, bool, int, float)):
                raise node.error(f"values[{i}]", "a string, boolean or number", value)
        tests = [_same(v) for v in values]
        return lambda v: any(t(v) for t in tests)
    if "regex" in given:
        pattern = node.str("regex")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise node.error("regex", f"a valid regular expression ({exc.msg})") from None
        return lambda v: isinstance(v, str) and compiled.search(v) is not None
    low = node.float("min") if node.has("min") else float("-inf")
    high = node.float("max") if node.has("max") else float("inf")
    return lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and low <= v <= high


def build(node: Node, name: str) -> Policy:
    if node.has("keys"):
        keys = node.str_list("keys")
        if not keys:
            raise node.error("keys", "a non-empty list of attribute keys")
    else:
        keys = [node.str("key")]
    scope = node.str("scope", "any", choices=SCOPES)
    test = _test(node)
    exact = _exact(node) if node.has("value") or node.has("values") else None
    return Attribute(name, keys, scope, test, exact)
