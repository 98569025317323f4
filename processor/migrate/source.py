"""Reading an otelcol config for import: typed access that remembers the key path (so every refusal and note
names `processors.tail_sampling.policies[2] (slow).latency.threshold_ms`), which keys were read (so an unknown
key is refused, never skipped), Go durations, and which components the service's pipelines actually run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from processor.config_node import ConfigError, load_yaml

KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")


class Refused(Exception):
    """A construct with no recohop equivalent: where it is and why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


@dataclass(frozen=True)
class Finding:
    path: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}: {self.text}"


@dataclass
class Findings:
    """What an import could not carry over (refusals: nothing is written) and what it carried over with a
    known difference (notes: printed, and written as comments next to the translated item)."""

    refused: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    def refuse(self, exc: Refused) -> None:
        self.refused.append(Finding(exc.path, exc.why))

    def attempt(self, read: Callable[[], Any], default: Any = None) -> Any:
        """`read()`, or `default` with the refusal recorded: every refusal of a component is listed at once."""
        try:
            return read()
        except Refused as exc:
            self.refuse(exc)
            return default

    def section(self, component: Any) -> Section | None:
        """The component's config as a Section, or None with the refusal recorded."""
        try:
            return Section(component.config, component.path)
        except Refused as exc:
            self.refuse(exc)
            return None

    def note(self, path: str, text: str) -> None:
        self.notes.append(Finding(path, text))

    def notes_under(self, prefix: str) -> list[Finding]:
        return [n for n in self.notes if n.path == prefix or n.path.startswith((prefix + ".", prefix + "["))]


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
                "h": 3600 * 10**9}


def go_duration_ns(value: Any) -> int | None:
    """A Go `time.Duration` as otelcol decodes it: a string such as `1h2m3.5s`, `500ms`, or an integer of
    nanoseconds. None when it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text == "0":
        return 0
    at, total = 0, Decimal(0)
    for match in _GO_DURATION.finditer(text):
        if match.start() != at:
            return None
        total += Decimal(match.group(1)) * _GO_UNITS_NS[match.group(2)]
        at = match.end()
    if at != len(text) or not text:
        return None
    return sign * int(total)


def seconds_text(ns: int) -> str:
    """A recohop duration for `ns` nanoseconds (recohop reads ms, s, m, h)."""
    if ns % 10**9 == 0:
        return f"{ns // 10**9}s"
    return f"{Decimal(ns) / 10**6}ms"


class Section:
    """One mapping of the collector config and its key path. Reading a key marks it as handled; `leftover()`
    lists the rest, which the translators refuse as unknown (otelcol itself rejects unknown keys, so such a key
    is from another collector version)."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise Refused(path, f"expected a mapping, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.path = path
        self.read: set[str] = set()

    def at(self, key: str | int) -> str:
        return f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = None, env_ok: bool = False) -> Any:
        self.read.add(key)
        value = self.data.get(key, default)
        if value is None:
            return default
        if not env_ok and _has_env_ref(value):
            raise Refused(self.at(key), "holds a ${...} reference, which only the collector expands at start-up; "
                                        "import reads literal values (put the value in the config first)")
        return value

    def str(self, key: str, default: str = "") -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise Refused(self.at(key), f"expected a string, got {value!r}")
        return value

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise Refused(self.at(key), f"expected true or false, got {value!r}")
        return value

    def int(self, key: str, default: int = 0) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Refused(self.at(key), f"expected an integer, got {value!r}")
        return value

    def number(self, key: str, default: float = 0.0) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(self.at(key), f"expected a number, got {value!r}")
        return float(value)

    def str_list(self, key: str) -> list[str]:
        value = self.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Refused(self.at(key), f"expected a list of strings, got {value!r}")
        return value

    def duration_ns(self, key: str, default: int = 0) -> int:
        if not self.has(key):
            self.read.add(key)
            return default
        value = self.get(key)
        ns = go_duration_ns(value)
        if ns is None or ns < 0:
            raise Refused(self.at(key), f"expected a duration such as 2s or 500ms, got {value!r}")
        return ns

    def section(self, key: str) -> Section:
        return Section(self.get(key, {}), self.at(key))

    def sections(self, key: str) -> list[Section]:
        value = self.get(key, [])
        if not isinstance(value, list):
            raise Refused(self.at(key), f"expected a list, got {type(value).__name__}")
        return [Section(item, f"{self.at(key)}[{i}]") for i, item in enumerate(value)]

    def leftover(self) -> list[str]:
        return [k for k in self.data if k not in self.read]

    def refuse_leftover(self, component: str) -> None:
        extra = self.leftover()
        if extra:
            raise Refused(self.at(extra[0]), f"not a setting of otelcol v0.158's {component}; recohop cannot "
                                             "tell what it would do")


def _has_env_ref(value: Any) -> bool:
    """A `${...}` in a string or a list of strings (mappings are checked key by key as they are read)."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, list):
        return any(isinstance(v, str) and "${" in v for v in value)
    return False


@dataclass
class Component:
    """One configured component, e.g. kind `processors`, id `tail_sampling/main` (type `tail_sampling`)."""

    kind: str
    id: str
    config: Any

    @property
    def type(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def path(self) -> str:
        return f"{self.kind}.{self.id}"


@dataclass
class Pipeline:
    name: str
    receivers: list[str]
    processors: list[str]
    exporters: list[str]


@dataclass
class CollectorConfig:
    file: str
    components: list[Component]
    pipelines: list[Pipeline]
    has_service: bool

    def used(self, component: Component) -> bool:
        """Whether the service runs it (otelcol builds only what its pipelines and extensions name)."""
        if not self.has_service:
            return True
        for p in self.pipelines:
            names = {"receivers": p.receivers, "processors": p.processors, "exporters": p.exporters,
                     "connectors": p.receivers + p.exporters}.get(component.kind, [])
            if component.id in names:
                return True
        return False

    def of_type(self, kind: str, type_name: str) -> list[Component]:
        return [c for c in self.components if c.kind == kind and c.type == type_name]


def load_collector_config(path: str | Path) -> CollectorConfig:
    """The components and service pipelines of an otelcol config file (several files merged by the collector
    must be merged into one first)."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, "", "an OpenTelemetry Collector config (a mapping with processors:, service: ...)",
                          data)
    components = []
    for kind in KINDS:
        section = data.get(kind) or {}
        if not isinstance(section, dict):
            raise ConfigError(path, kind, "a mapping of component ids to their settings", section)
        components.extend(Component(kind, str(cid), cfg) for cid, cfg in section.items())
    service = data.get("service")
    pipelines = []
    if isinstance(service, dict):
        for name, spec in (service.get("pipelines") or {}).items():
            spec = spec or {}
            pipelines.append(Pipeline(str(name), list(spec.get("receivers") or []),
                                      list(spec.get("processors") or []), list(spec.get("exporters") or [])))
    return CollectorConfig(str(path), components, pipelines, isinstance(service, dict))
