"""Decision cache: trace id -> decision for spans and logs that arrive after their trace was decided.

Two generations of plain dicts give a bounded, O(1) cache without per-entry ordering overhead: when the young
generation reaches half the size, it becomes the old one and the previous old one is forgotten.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class DecisionCache(Generic[V]):
    def __init__(self, size: int) -> None:
        self.half = max(1, size // 2)
        self._young: dict[bytes, V] = {}
        self._old: dict[bytes, V] = {}

    def get(self, trace_id: bytes) -> V | None:
        value = self._young.get(trace_id)
        if value is None:
            value = self._old.get(trace_id)
        return value

    def put(self, trace_id: bytes, value: V) -> None:
        if len(self._young) >= self.half:
            self._old = self._young
            self._young = {}
        self._young[trace_id] = value

    def __len__(self) -> int:
        return len(self._young) + len(self._old)
