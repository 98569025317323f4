"""Typed access to a YAML mapping that remembers where it came from.

Every config reader in recohop (hop config, policy files, redaction rules, derivation rules) reads through
`Node`, so every error names the file, the key path and what was expected, and unknown keys are errors
(as in otelcol).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from processor.assets import resolve_builtin


class ConfigError(ValueError):
    """A config problem, phrased for the person who wrote the file."""

    def __init__(self, file: str | Path, key: str, expected: str, got: Any = None) -> None:
        self.file = str(file)
        self.key = key
        self.expected = expected
        got_text = "" if got is None else f", got {_describe(got)}"
        super().__init__(f"{self.file}: {key or '<top level>'}: expected {expected}{got_text}")


def _describe(value: Any) -> str:
    """Say what a value is without echoing it in full (it may be a secret or PII)."""
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string of length {len(value)}" if len(value) > 40 else f"'{value}'"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2,
               "GB": 1000**3}
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning parse errors into a ConfigError that names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", "a readable file", exc.strerror or str(exc)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path, where, "valid YAML") from None


class Node:
    """A mapping from a config file plus its location; reading a key marks it as known."""

    def __init__(self, data: Any, file: str | Path, path: str = "") -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(file, path, "a mapping", data)
        self.data: dict[str, Any] = data
        self.file = str(file)
        self.path = path
        self._read: set[str] = set()

    @classmethod
    def from_file(cls, path: str | Path) -> Node:
        return cls(load_yaml(path), path)

    def key_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, expected: str, got: Any = None) -> ConfigError:
        return ConfigError(self.file, self.key_path(key), expected, got)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self.data.get(key, default)

    def str(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str:
        value = self.raw(key, default)
        if value is None:
            raise self.error(key, "a string (required)")
        if not isinstance(value, str):
            raise self.error(key, "a string", value)
        if choices is not None and value not in choices:
            raise self.error(key, "one of " + ", ".join(choices), value)
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.str(key)

    def bool(self, key: str, default: bool | None = None) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def int(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "an integer", value)
        if minimum is not None and value < minimum:
            raise self.error(key, f"an integer >= {minimum}", value)
        return value

    def float(self, key: str, default: float | None = None, minimum: float | None = None,
              maximum: float | None = None) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, "a number", value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(key, f"a number in [{minimum}, {maximum}]", value)
        return float(value)

    def duration(self, key: str, default: str | float | None = None) -> float:
        """Seconds, from `500ms`, `2s`, `1m` or a bare number of seconds."""
        value = self.raw(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match:
            raise self.error(key, "a duration such as 500ms, 2s, 1m", value)
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]

    def size(self, key: str, default: str | int | None = None) -> int:
        """Bytes, from `64MiB`, `512KiB`, `1GB` or a bare number of bytes."""
        value = self.raw(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        match = _SIZE.match(value) if isinstance(value, str) else None
        if not match:
            raise self.error(key, "a size such as 512KiB, 64MiB, 1GiB", value)
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])

    def list(self, key: str, default: list[Any] | None = None) -> list[Any]:
        value = self.raw(key, default if default is not None else [])
        if not isinstance(value, list):
            raise self.error(key, "a list", value)
        return value

    def str_list(self, key: str, default: list[str] | None = None) -> list[str]:
        values = self.list(key, default)
        for i, item in enumerate(values):
            if not isinstance(item, str):
                raise ConfigError(self.file, f"{self.key_path(key)}[{i}]", "a string", item)
        return values

    def child(self, key: str) -> Node:
        return Node(self.raw(key), self.file, self.key_path(key))

    def children(self, key: str) -> Iterator[Node]:
        """The mappings of a list under `key`, each knowing its index for error messages."""
        for i, item in enumerate(self.list(key)):
            yield Node(item, self.file, f"{self.key_path(key)}[{i}]")

    def path_value(self, key: str, default: str | None = None) -> Path | None:
        """A file path, relative paths resolved against the directory of this config file; `builtin:<path>`
        names a file shipped with recohop (see processor/assets.py)."""
        value = self.raw(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, "a file path", value)
        shipped = resolve_builtin(value)
        if shipped is not None:
            if not shipped.is_file():
                raise self.error(key, "a file shipped with recohop (builtin:policies/default.yaml, "
                                      "builtin:redaction/default.yaml, builtin:derivations/default.yaml, ...)", value)
            return shipped
        path = Path(value)
        return path if path.is_absolute() else Path(self.file).parent / path

    def done(self) -> None:
        """Fail on keys nobody read: a typo must not silently fall back to a default."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise self.error(unknown[0], "a known key (unknown key '" + unknown[0] + "')")
