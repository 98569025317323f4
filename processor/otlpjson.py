"""OTLP/JSON, the encoding the OTLP specification gives for files and HTTP: protobuf's JSON mapping (lowerCamelCase
names, 64-bit integers as strings) except that trace and span ids are hex strings, not base64, and enums are
integers, not names. The file sink writes it, so otelcol's otlpjsonfile receiver and other OTLP tools read the
files; the readers here also take the base64 ids of files written by recohop before 0.2.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

# The id fields of spans, links, log records and exemplars; no other OTLP field has these JSON names.
ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})

M = TypeVar("M", bound=Message)


def dumps(request: Message) -> str:
    """One export request as an OTLP/JSON line (no newline)."""
    tree = json_format.MessageToDict(request, use_integers_for_enums=True)
    _convert_ids(tree, _base64_to_hex)
    return json.dumps(tree)


def loads(line: str | bytes, message: M) -> M:
    """Parse one OTLP/JSON request into `message` (hex ids; base64 ids of older files are taken as they are)."""
    tree = json.loads(line)
    _convert_ids(tree, _hex_to_base64)
    json_format.ParseDict(tree, message)
    return message


def hex_ids(tree: dict[str, Any], key: str = "traceId") -> list[str]:
    """Every `key` id in a parsed OTLP/JSON tree, as hex (either encoding), in document order."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == key and isinstance(value, str):
                    found.append(id_hex(value))
                elif isinstance(value, (dict, list)):
                    visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(tree)
    return found


def _convert_ids(node: Any, convert: Any) -> None:
    if isinstance(node, dict):
        for name, value in node.items():
            if name in ID_FIELDS and isinstance(value, str):
                node[name] = convert(value)
            elif isinstance(value, (dict, list)):
                _convert_ids(value, convert)
    elif isinstance(node, list):
        for item in node:
            _convert_ids(item, convert)


def _base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _is_hex_id(value: str) -> bool:
    """Hex of an 8- or 16-byte id; base64 of those is 12 or 24 characters, so the two never overlap."""
    if len(value) not in (16, 32):
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _hex_to_base64(value: str) -> str:
    if _is_hex_id(value):
        return base64.b64encode(bytes.fromhex(value)).decode()
    return value


def id_hex(value: str) -> str:
    """An id as written in OTLP/JSON (hex) or by protobuf's mapping (base64), as hex."""
    if _is_hex_id(value):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value
