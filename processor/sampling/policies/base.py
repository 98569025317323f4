"""The one policy interface: `matches(trace, now)` on a whole buffered trace (the reference store asks it per
trace), `batch(layout, now)` for a batch of the native store's due traces at once (array operations; by default
it asks `matches` per trace), plus `add_needs` to say which per-span facts the trace buffer must precompute when
spans arrive (so a policy never re-reads spans)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from processor.config_node import Node
from processor.sampling.policies.batch import Batch, BatchLayout, in_python


@dataclass
class Needs:
    """What the buffer extracts per span, collected from every configured policy."""

    span_keys: set[str] = field(default_factory=set)
    # Per span key: the encoded KeyValues of the exact string/bool values policies test for (a trace without
    # any of them cannot match, so its bytes are not decoded), or None when any value must be read.
    span_key_gates: dict[str, set[bytes] | None] = field(default_factory=dict)
    resource_keys: set[str] = field(default_factory=set)
    span_names: set[str] = field(default_factory=set)
    trace_duration: bool = False
    exception_events: bool = False


class TraceView(Protocol):
    """The facts a policy may read about one trace (implemented by `buffer.TraceEntry`)."""

    trace_id: bytes
    nspans: int
    error: bool
    exception: bool
    max_severity: int
    start: int
    end: int
    durations: dict[str, int] | None
    span_attrs: dict[str, list[Any]] | None
    res_attrs: dict[str, list[Any]] | None


class Policy:
    """Base policy: a name, a kind, and a match test; `th` is set when a keep means "kept by probability"."""

    kind = "policy"
    th: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    def add_needs(self, needs: Needs) -> None:
        """Register the span facts this policy reads."""

    def matches(self, trace: TraceView, now: float) -> bool:
        raise NotImplementedError

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        """This policy over a batch of the native store's traces (one bool per row). Kinds whose facts are
        columns answer with array operations; this default asks `matches` per trace."""
        return in_python(self, now)


# How a composite builds its parts: (a sub-policy's mapping, its default name) -> the policy. The factory hands
# its `build_policy` in, so no policy module imports the factory.
BuildPart = Callable[[Node, str], Policy]
