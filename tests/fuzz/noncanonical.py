"""Valid protobuf encodings of a message other than the one protobuf writes, for the native scanners' differential
oracles: whatever comes out of `reencode` parses to exactly the message that went in (the caller checks), so a
scanner must read it as the parser does — last one wins for scalars, messages merge, unknown fields are skipped
— or hand it to the reference path.

What it varies, chosen by a seeded RNG: field order (repeated fields keep their own order), a singular message
field split into two occurrences (the parser merges them), a scalar or oneof member written first with a junk
value that a later occurrence overrides, overlong varints (tags, lengths, values), and unknown fields of every
wire type OTLP's parser skips (varint, fixed64, length-delimited, fixed32).
"""

from __future__ import annotations

import random

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from wire_encodings import varint as canonical_varint

MESSAGE = FieldDescriptor.TYPE_MESSAGE
VARINT_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
                FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM,
                FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}


def varint(value: int, overlong: int = 0) -> bytes:
    """A varint, padded with `overlong` extra continuation bytes (still at most 10 bytes: the parser's limit)."""
    out = bytearray(canonical_varint(value))
    pad = min(overlong, 10 - len(out))
    if pad > 0:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


class Encoder:
    """One re-encoding; `rate` is the chance of each variation at each place it could happen."""

    def __init__(self, rng: random.Random, rate: float = 0.3) -> None:
        self.rng = rng
        self.rate = rate

    def _maybe(self) -> bool:
        return self.rng.random() < self.rate

    def _pad(self) -> int:
        return self.rng.randint(1, 3) if self._maybe() else 0

    def _short(self, value: int) -> bytes:
        """A 32-bit varint (tag, length) padded to at most 5 bytes, the most the parser reads for those."""
        plain = varint(value)
        return varint(value, min(self._pad(), 5 - len(plain)))

    def tag(self, number: int, wire_type: int) -> bytes:
        return self._short(number << 3 | wire_type)

    def delimited(self, number: int, payload: bytes) -> bytes:
        return self.tag(number, 2) + self._short(len(payload)) + payload

    def unknown(self, used: set[int]) -> bytes:
        """A field of a number the message does not declare (the parser keeps it as unknown, meaning nothing)."""
        number = self.rng.choice([n for n in (50, 99, 1000, 19999, 536870911) if n not in used])
        kind = self.rng.randrange(4)
        if kind == 0:
            return self.tag(number, 0) + varint(self.rng.getrandbits(64), self._pad())
        if kind == 1:
            return self.tag(number, 1) + self.rng.randbytes(8)
        if kind == 2:
            return self.delimited(number, self.rng.randbytes(self.rng.randrange(6)))
        return self.tag(number, 5) + self.rng.randbytes(4)

    def scalar(self, message: Message, field: FieldDescriptor, value: object) -> bytes:
        """One scalar field as protobuf writes it, with an overlong varint value now and then."""
        if field.type in VARINT_TYPES and self._maybe():
            single = type(message)()
            setattr(single, field.name, value)
            raw = single.SerializeToString()
            # protobuf wrote tag + varint; re-pad the value's varint (the tag is the field number's, 1 byte here)
            number_tag = varint(field.number << 3)
            if raw.startswith(number_tag):
                rest = raw[len(number_tag):]
                parsed, size = _read_varint(rest)
                if size == len(rest):
                    return self.tag(field.number, 0) + varint(parsed, self.rng.randint(1, 3))
        single = type(message)()
        if field.is_repeated:
            getattr(single, field.name).extend(value)  # type: ignore[arg-type]
        else:
            setattr(single, field.name, value)
        return single.SerializeToString()

    def junk_first(self, message: Message, field: FieldDescriptor) -> bytes:
        """An earlier occurrence that a later one overrides: another value of the field, or of another member
        of its oneof."""
        target = field
        if field.containing_oneof is not None and self.rng.random() < 0.5:
            target = self.rng.choice(list(field.containing_oneof.fields))
        if target.type == MESSAGE:
            if field.containing_oneof is None or target is field:
                return b""  # an earlier message occurrence would merge, not be overridden
            return self.delimited(target.number, b"")
        single = type(message)()
        junk: object
        if target.type in (FieldDescriptor.TYPE_STRING,):
            junk = "junk"
        elif target.type == FieldDescriptor.TYPE_BYTES:
            junk = b"junk"
        elif target.type == FieldDescriptor.TYPE_BOOL:
            junk = True
        elif target.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            junk = 1.5
        else:
            junk = 7
        setattr(single, target.name, junk)
        return single.SerializeToString()

    def message(self, message: Message) -> bytes:
        """The whole message re-encoded (recursively)."""
        parts: list[list[bytes]] = []  # one list per field: its occurrences in order
        used = {f.number for f in message.DESCRIPTOR.fields}
        for field, value in message.ListFields():
            occurrences: list[bytes] = []
            if field.type == MESSAGE:
                items = value if field.is_repeated else [value]
                if field.containing_oneof is not None and self._maybe():
                    occurrences.append(self.junk_first(message, field))
                for item in items:
                    if not field.is_repeated and not field.message_type.GetOptions().map_entry and self._maybe():
                        first, second = self.split(item)
                        occurrences.append(self.delimited(field.number, self.message(first)))
                        occurrences.append(self.delimited(field.number, self.message(second)))
                    else:
                        occurrences.append(self.delimited(field.number, self.message(item)))
            else:
                if not field.is_repeated and self._maybe():
                    occurrences.append(self.junk_first(message, field))
                occurrences.append(self.scalar(message, field, value))
            parts.append([o for o in occurrences if o])
        if self._maybe():
            self.rng.shuffle(parts)
        elif self._maybe():
            parts.reverse()
        out = bytearray()
        for occurrences in parts:
            for occurrence in occurrences:
                if self._maybe():
                    out += self.unknown(used)
                out += occurrence
        if self._maybe():
            out += self.unknown(used)
        return bytes(out)

    def split(self, message: Message) -> tuple[Message, Message]:
        """Two messages whose merge is `message`: some fields in the first, the rest in the second (a repeated
        field's elements split between them in order)."""
        first, second = type(message)(), type(message)()
        for field, value in message.ListFields():
            if field.is_repeated:
                cut = self.rng.randint(0, len(value))
                getattr(first, field.name).extend(value[:cut])
                getattr(second, field.name).extend(value[cut:])
            else:
                target = first if self.rng.random() < 0.5 else second
                if field.type == MESSAGE:
                    getattr(target, field.name).CopyFrom(value)
                else:
                    setattr(target, field.name, value)
        # A oneof member in the first half and another in the second would make the second win: keep oneofs whole.
        for oneof in message.DESCRIPTOR.oneofs:
            which = message.WhichOneof(oneof.name)
            if which is not None and first.WhichOneof(oneof.name) is not None and second.WhichOneof(oneof.name):
                second.ClearField(which)
        return first, second


def _read_varint(data: bytes) -> tuple[int, int]:
    value = shift = 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return value, len(data) + 1


def reencode(message: Message, seed: int, rate: float = 0.3) -> bytes | None:
    """`message` in a random valid non-canonical encoding, or None in the rare case the parser would not read it
    back as the same message (then the caller has nothing to compare)."""
    raw = Encoder(random.Random(seed), rate).message(message)
    try:
        back = type(message).FromString(raw)
    except Exception:  # noqa: BLE001 - a DecodeError means this encoding is not one to compare on
        return None
    back.DiscardUnknownFields()  # they mean nothing, but message equality counts them
    return raw if back == message else None
