"""Valid protobuf encodings other than the one Python's protobuf writes, for differential tests of the native
scanners: every encoding here means, to the protobuf parser, exactly what the canonical bytes mean."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from processor.otlp_values import varint as otlp_varint


def varint(value: int) -> bytes:
    """A varint as protobuf writes it; negative values as their 64-bit two's complement (10 bytes)."""
    return otlp_varint(value & ((1 << 64) - 1))


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def reversed_fields(message: Message) -> bytes:
    """`message` with every message's fields written from the highest number to the lowest, recursively: the
    order OpenTelemetry Collector's pdata marshaller writes (e.g. a KeyValue's value before its key)."""
    out = bytearray()
    for field, value in reversed(message.ListFields()):
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        # Repeated fields in their own order (element order is meaning); scalars by protobuf itself.
        if is_message:
            items = value if field.is_repeated else [value]
            for item in items:
                out += field_bytes(field.number, reversed_fields(item))
        else:
            single = type(message)()
            if field.is_repeated:
                getattr(single, field.name).extend(value)
            else:
                setattr(single, field.name, value)
            out += single.SerializeToString()
    return bytes(out)
