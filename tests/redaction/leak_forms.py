"""Finding a PII value in any easily reversible form: raw bytes, or after stripping separators, case, URL and HTML
encoding and compatibility forms (full-width digits and `＠`). Used on what a running hop sends, serves, logs and
writes to disk; leaks are reported by index, never by value."""

from __future__ import annotations

import base64
import html
import json
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Iterator

_NOT_ALNUM = re.compile(r"[\W_]+")


def normal_form(text: str) -> str:
    """`text` decoded (%xx and HTML entities, twice for double encodings), NFKC, case-folded, and with every
    character that is not a letter or digit removed."""
    for _ in range(2):
        text = html.unescape(urllib.parse.unquote(text))
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


class Haystack:
    """The bytes of one place (downstream, /metrics, a log, segment files ...), searched raw and normalised."""

    def __init__(self, name: str, data: bytes, texts: Iterable[str] = ()) -> None:
        self.name = name
        self.data = data
        # Binary formats: undecodable bytes become U+FFFD, which the normal form drops.
        decoded = [data.decode("utf-8", "replace"), *texts]
        self.normal = "\x00".join(normal_form(t) for t in decoded)

    def leaks(self, values: Iterable[str]) -> list[int]:
        """Indexes of the values found raw or in normal form."""
        found = []
        for i, value in enumerate(values):
            normal = normal_form(value)
            if value.encode("utf-8") in self.data or (normal and normal in self.normal):
                found.append(i)
        return found


def json_strings(data: bytes) -> Iterator[str]:
    """Every string in OTLP/JSON lines, bytes values base64-decoded (the file sink writes them base64)."""
    def walk(node: object, key: str = "") -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from walk(v, k)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, key)
        elif isinstance(node, str):
            yield node
            if key == "bytesValue":
                yield base64.b64decode(node).decode("utf-8", "replace")

    for line in data.splitlines():
        if line.strip():
            yield from walk(json.loads(line))
