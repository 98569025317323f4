"""Small OTLP building blocks shared by workloads, benches, stages and tests: attribute values and varints."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

Scalar = str | bool | int | float


def set_value(target: AnyValue, value: object) -> None:
    """Store a Python scalar in an AnyValue (bool before int: bool is an int in Python)."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = str(value)


def kv(key: str, value: object) -> KeyValue:
    out = KeyValue(key=key)
    set_value(out.value, value)
    return out


def add_attribute(message: object, key: str, value: object) -> None:
    """Append one attribute to a span, event, link, resource or log record."""
    attr = message.attributes.add()  # type: ignore[attr-defined]
    attr.key = key
    set_value(attr.value, value)


def varint(n: int) -> bytes:
    """Protobuf base-128 varint encoding."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
