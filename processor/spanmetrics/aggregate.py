"""Series storage for derived metrics: label tuples -> slots, values in numpy arrays, filled once per batch.

The span scan appends slot ids (and weights or durations) to plain lists; `add_batch` turns them into one
`np.bincount`, so the per-span cost is a dict lookup and a list append.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from processor.cardinality.limits import OTHER, OVERFLOW_LABEL, SeriesLimiter, top_k

Key = tuple[str, ...]
OVERFLOW: Key = ("\x00overflow",)  # sentinel key of the overflow series (never a real label tuple)


@dataclass
class Exemplar:
    trace_id: bytes
    span_id: bytes
    value: float
    time_unix_nano: int


@dataclass
class Point:
    """One series in a snapshot; `buckets` (non-cumulative, last = +Inf) only for histograms."""

    labels: dict[str, str]
    value: float = 0.0
    buckets: list[int] = field(default_factory=list)
    exemplars: dict[int, Exemplar] = field(default_factory=dict)


@dataclass
class MetricSnapshot:
    name: str  # Prometheus name (counters end in _total)
    help: str
    kind: str  # counter | histogram
    bounds: list[float]
    integer: bool
    points: list[Point]


class SeriesIndex:
    """Label tuples of one metric -> dense slot ids, with a series limit and one overflow slot."""

    def __init__(self, label_names: list[str], limiter: SeriesLimiter) -> None:
        self.label_names = label_names
        self.limiter = limiter
        self.index: dict[tuple, int] = {}
        self.keys: list[Key] = []
        self.overflow = -1

    def slot(self, key: tuple, labels: Key | None = None) -> int:
        """Slot of a series not in `index` yet: a new slot if the limit allows, else the overflow slot.
        `labels` is the label-value tuple when `key` is a cheaper raw form of it. Folded keys are not
        remembered, so a flood of distinct values costs no memory."""
        if self.limiter.admit(key):
            self.index[key] = len(self.keys)
            self.keys.append(key if labels is None else labels)
            return self.index[key]
        if self.overflow < 0:
            self.overflow = len(self.keys)
            self.keys.append(OVERFLOW)
        return self.overflow

    def count_folded(self, ids: np.ndarray) -> None:
        if self.overflow >= 0:
            self.limiter.folded(int(np.count_nonzero(ids == self.overflow)))

    def count_folded_groups(self, slots: np.ndarray, measurements: np.ndarray) -> None:
        if self.overflow >= 0:
            self.limiter.folded(int(measurements[slots == self.overflow].sum()))

    def labels(self, key: Key) -> dict[str, str]:
        if key is OVERFLOW:
            return {OVERFLOW_LABEL: "true"}
        return dict(zip(self.label_names, key, strict=True))


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    if rows <= array.shape[0]:
        return array
    bigger = np.zeros((max(rows, 2 * array.shape[0]),) + array.shape[1:], dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


class CounterAgg:
    """A cumulative counter per series."""

    def __init__(self, name: str, help_text: str, series: SeriesIndex, integer: bool, top: int | None) -> None:
        self.name, self.help, self.series, self.integer, self.top = name, help_text, series, integer, top
        self.values = np.zeros(16, dtype=np.float64)

    def add_batch(self, ids: list[int], weights: list[float] | None) -> None:
        if not ids:
            return
        n = len(self.series.keys)
        arr = np.asarray(ids, dtype=np.int64)
        self.values = _grow(self.values, n)
        self.values[:n] += np.bincount(arr, weights=weights, minlength=n)
        self.series.count_folded(arr)

    def add_groups(self, slots: np.ndarray, weights: np.ndarray, measurements: np.ndarray) -> None:
        """Adds per-group totals (the native intake): `weights[i]` to series `slots[i]`, which stands for
        `measurements[i]` spans (for the overflow count)."""
        n = len(self.series.keys)
        self.values = _grow(self.values, n)
        self.values[:n] += np.bincount(slots, weights=weights, minlength=n)
        self.series.count_folded_groups(slots, measurements)

    def snapshot(self) -> MetricSnapshot:
        keys = self.series.keys
        volumes = {k: float(self.values[i]) for i, k in enumerate(keys)}
        points = [Point(self.series.labels(k), value=v) for k, v in _fold_top(volumes, self.top, self.series)]
        return MetricSnapshot(self.name, self.help, "counter", [], self.integer, points)


class HistogramAgg:
    """Explicit-bucket histogram per series (values in seconds), plus exemplars of kept traces."""

    def __init__(self, name: str, help_text: str, series: SeriesIndex, bounds: list[float],
                 top: int | None) -> None:
        self.name, self.help, self.series, self.top = name, help_text, series, top
        self.bounds = bounds
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self.width = len(bounds) + 1
        self.counts = np.zeros((16, self.width), dtype=np.int64)
        self.sums = np.zeros(16, dtype=np.float64)
        self.exemplars: dict[tuple[int, int], Exemplar] = {}

    def add_batch(self, ids: list[int], durations_ns: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Adds one batch; returns (slot ids, bucket index, seconds) so exemplar candidates can be picked."""
        n = len(self.series.keys)
        arr = np.asarray(ids, dtype=np.int64)
        seconds = np.asarray(durations_ns, dtype=np.float64) * 1e-9
        bucket = np.searchsorted(self._bounds, seconds, side="left")  # le is inclusive
        self.counts = _grow(self.counts, n)
        self.sums = _grow(self.sums, n)
        flat = np.bincount(arr * self.width + bucket, minlength=n * self.width)
        self.counts[:n] += flat.reshape(n, self.width)
        self.sums[:n] += np.bincount(arr, weights=seconds, minlength=n)
        self.series.count_folded(arr)
        return arr, bucket, seconds

    def add_groups(self, slots: np.ndarray, counts: np.ndarray, sums: np.ndarray, measurements: np.ndarray) -> None:
        """Adds per-group bucket counts (rows of `counts`) and sums of seconds (the native intake)."""
        n = len(self.series.keys)
        self.counts = _grow(self.counts, n)
        self.sums = _grow(self.sums, n)
        np.add.at(self.counts, slots, counts)
        np.add.at(self.sums, slots, sums)
        self.series.count_folded_groups(slots, measurements)

    def snapshot(self) -> MetricSnapshot:
        keys = self.series.keys
        volumes = {k: float(self.counts[i].sum()) for i, k in enumerate(keys)}
        slot_of = {k: i for i, k in enumerate(keys)}
        kept = _kept_keys(volumes, self.top, self.series)
        by_slot: dict[int, dict[int, Exemplar]] = {}
        for (s, b), ex in self.exemplars.items():
            by_slot.setdefault(s, {})[b] = ex
        points: list[Point] = []
        other: Point | None = None
        for key in keys:
            i = slot_of[key]
            if key in kept:
                points.append(Point(self.series.labels(key), float(self.sums[i]), self.counts[i].tolist(),
                                    by_slot.get(i, {})))
                continue
            if other is None:
                other = Point({n: OTHER for n in self.series.label_names}, 0.0, [0] * self.width)
            other.value += float(self.sums[i])
            other.buckets = [a + b for a, b in zip(other.buckets, self.counts[i].tolist(), strict=True)]
        if other is not None:
            points.append(other)
        return MetricSnapshot(self.name, self.help, "histogram", self.bounds, False, points)


def _kept_keys(volumes: dict[Key, float], k: int | None, series: SeriesIndex) -> set[Key]:
    if k is None:
        return set(volumes)
    ranked = top_k({key: v for key, v in volumes.items() if key is not OVERFLOW}, k)
    return ranked | ({OVERFLOW} if OVERFLOW in volumes else set())


def _fold_top(volumes: dict[Key, float], k: int | None, series: SeriesIndex) -> list[tuple[Key, float]]:
    """Top-K by volume: the k largest series stay, the rest are summed into one series labelled `other`
    (exact totals; the overflow series is never folded). Applied to snapshots, not to stored state."""
    kept = _kept_keys(volumes, k, series)
    out = [(key, v) for key, v in volumes.items() if key in kept]
    rest = [v for key, v in volumes.items() if key not in kept]
    if rest:
        out.append(((OTHER,) * len(series.label_names), float(sum(rest))))
    return out
