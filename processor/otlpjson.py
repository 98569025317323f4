"""OTLP/JSON, the encoding the OTLP specification gives for files and HTTP: protobuf's JSON mapping (lowerCamelCase
names, 64-bit integers as strings) except that trace and span ids are hex strings, not base64, and enums are
integers, not names. The file sink writes it, so otelcol's otlpjsonfile receiver and other OTLP tools read the
files; the readers here also take the base64 ids of files written by recohop before 0.2.

Files are read line by line, and otelcol's file readers (the otlpjsonfile receiver, filelog) drop a line longer than
their `max_log_size`, 1 MiB by default, without a word: `dump_lines` cuts a large request into several requests of
at most `MAX_LINE_BYTES` each, so the file sink never writes a line a default reader loses.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

# The id fields of spans, links, log records and exemplars; no other OTLP field has these JSON names.
ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})

M = TypeVar("M", bound=Message)


# otelcol's fileconsumer reads a line of up to max_log_size bytes (newline excluded; default 1 MiB) and drops longer
# ones silently (checked against otelcol v0.158: 1048576 bytes arrive, 1048577 do not).
MAX_LINE_BYTES = 1 << 20

# Top-level key -> (scope list key, item list key) of each signal's OTLP/JSON tree.
_NESTING = {
    "resourceSpans": ("scopeSpans", "spans"),
    "resourceLogs": ("scopeLogs", "logRecords"),
    "resourceMetrics": ("scopeMetrics", "metrics"),
}
_POINT_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "summary")
# A placeholder value no telemetry holds: json.dumps of a node with it marks where a child list goes.
_HOLE = f"recohop-otlpjson-hole-{uuid.uuid4().hex}"


def to_tree(request: Message) -> dict[str, Any]:
    """An export request as an OTLP/JSON tree (hex ids, integer enums)."""
    tree = json_format.MessageToDict(request, use_integers_for_enums=True)
    _convert_ids(tree, _base64_to_hex)
    return tree


def dumps(request: Message) -> str:
    """One export request as an OTLP/JSON line (no newline), however long."""
    return json.dumps(to_tree(request))


def dump_lines(request: Message, max_line_bytes: int = MAX_LINE_BYTES) -> list[str]:
    """One export request as OTLP/JSON lines (no newlines) of at most `max_line_bytes` each.

    A request that fits is one line, as `dumps`. A larger one is cut between spans, log records or metric data
    points into requests that repeat their resource and scope; the lines together hold every item once, in
    order. Only a single span or log record (or metric data point) larger than the limit gets a longer line of
    its own: nothing smaller can carry it. Resources or scopes without items are dropped when a request is cut.
    (json.dumps writes ASCII only, so characters are bytes.)"""
    tree = to_tree(request)
    line = json.dumps(tree)
    if len(line) <= max_line_bytes or len(tree) != 1 or next(iter(tree)) not in _NESTING:
        return [line]
    return list(_cut(tree, max_line_bytes))


def _around(node: dict[str, Any], key: str) -> tuple[str, str]:
    """The JSON text of `node` before and after the value of `key` (its child list)."""
    holed = dict(node)
    holed[key] = _HOLE
    before, hole, after = json.dumps(holed).partition(json.dumps(_HOLE))
    assert hole, "the placeholder is always written"
    return before, after


def _cut(tree: dict[str, Any], limit: int) -> Iterator[str]:
    top, resources = next(iter(tree.items()))
    scope_key, item_key = _NESTING[top]
    packer = _Packer(top, limit)
    for r_index, resource in enumerate(resources):
        r_text = (r_index, *_around(resource, scope_key))
        for s_index, scope in enumerate(resource.get(scope_key, ())):
            s_text = (s_index, *_around(scope, item_key))
            room = limit - packer.overhead(r_text, s_text)
            for item in scope.get(item_key, ()):
                pieces = _metric_pieces(item, room) if top == "resourceMetrics" else [json.dumps(item)]
                for piece in pieces:
                    yield from packer.add(r_text, s_text, piece)
    yield from packer.flush()


def _metric_pieces(metric: dict[str, Any], room: int) -> list[str]:
    """A metric as one JSON text, or, when larger than `room`, as copies each holding a run of its points."""
    text = json.dumps(metric)
    kind = next((k for k in _POINT_KINDS if k in metric), None)
    if len(text) <= room or kind is None or len(metric[kind].get("dataPoints", ())) < 2:
        return [text]
    holed = dict(metric)
    holed[kind] = dict(metric[kind], dataPoints=_HOLE)
    before, _, after = json.dumps(holed).partition(json.dumps(_HOLE))
    pieces: list[str] = []
    run: list[str] = []
    size = len(before) + len(after) + 2
    for point in map(json.dumps, metric[kind]["dataPoints"]):
        added = len(point) + (2 if run else 0)
        if run and size + added > room:
            pieces.append(before + "[" + ", ".join(run) + "]" + after)
            run, size, added = [], len(before) + len(after) + 2, len(point)
        run.append(point)
        size += added
    pieces.append(before + "[" + ", ".join(run) + "]" + after)
    return pieces


# (index, text before the child list, text after it) of a resource or scope entry.
_Entry = tuple[int, str, str]


class _Packer:
    """Packs items into lines greedily, in order, repeating the resource and scope text around them."""

    def __init__(self, top: str, limit: int) -> None:
        self.head = "{" + json.dumps(top) + ": ["
        self.limit = limit
        self.resources: list[tuple[_Entry, list[tuple[_Entry, list[str]]]]] = []
        self.size = len(self.head) + 2

    def overhead(self, resource: _Entry, scope: _Entry) -> int:
        """The bytes of a line holding one item of this resource and scope, the item excluded."""
        return len(self.head) + 2 + len(resource[1]) + len(resource[2]) + len(scope[1]) + len(scope[2]) + 4

    def _cost(self, resource: _Entry, scope: _Entry, item: str) -> int:
        if self.resources and self.resources[-1][0][0] == resource[0]:
            scopes = self.resources[-1][1]
            if scopes[-1][0][0] == scope[0]:
                return 2 + len(item)
            return 2 + len(scope[1]) + len(scope[2]) + 2 + len(item)
        separator = 2 if self.resources else 0
        return separator + len(resource[1]) + len(resource[2]) + len(scope[1]) + len(scope[2]) + 4 + len(item)

    def add(self, resource: _Entry, scope: _Entry, item: str) -> Iterator[str]:
        cost = self._cost(resource, scope, item)
        if self.resources and self.size + cost > self.limit:
            yield from self.flush()
            cost = self._cost(resource, scope, item)
        if self.resources and self.resources[-1][0][0] == resource[0]:
            scopes = self.resources[-1][1]
            if scopes[-1][0][0] == scope[0]:
                scopes[-1][1].append(item)
            else:
                scopes.append((scope, [item]))
        else:
            self.resources.append((resource, [(scope, [item])]))
        self.size += cost

    def flush(self) -> Iterator[str]:
        if not self.resources:
            return
        line = self.head + ", ".join(
            r[1] + "[" + ", ".join(s[1] + "[" + ", ".join(items) + "]" + s[2] for s, items in scopes) + "]" + r[2]
            for r, scopes in self.resources) + "]}"
        assert len(line) == self.size, "the packer's size accounting matches the text it writes"
        self.resources = []
        self.size = len(self.head) + 2
        yield line


def loads(line: str | bytes, message: M, ignore_unknown_fields: bool = False) -> M:
    """Parse one OTLP/JSON request into `message` (hex ids; base64 ids of older files are taken as they are).
    `ignore_unknown_fields` is for what senders give us (OTLP/HTTP): the spec has receivers skip fields newer
    than their proto instead of refusing the request."""
    tree = json.loads(line)
    _convert_ids(tree, _hex_to_base64)
    json_format.ParseDict(tree, message, ignore_unknown_fields=ignore_unknown_fields)
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
