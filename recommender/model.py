"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) in numpy, a popularity fallback and top-N candidates.

Each half-step solves one small ridge system per user (or item). Rows are sorted by history length and
solved in padded batches with one `np.linalg.solve` call each, so the cost is ~nnz·f² in BLAS, not Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from recommender.data import Interactions

_BATCH_ELEMENTS = 1 << 16  # rows × padded length per batch: bounds the (B, L, f) temporary


@dataclass(frozen=True)
class ALSConfig:
    factors: int = 32
    regularization: float = 0.1
    alpha: float = 10.0  # confidence = 1 + alpha * weight
    iterations: int = 10
    seed: int = 0


@dataclass
class _Batch:
    rows: np.ndarray  # (B,) which users/items this batch solves
    cols: np.ndarray  # (B, L) padded indices into the fixed side
    conf: np.ndarray  # (B, L) confidence, 0 on padding
    sqrt_extra: np.ndarray  # (B, L) sqrt(confidence − 1), 0 on padding


def _batches(rows: np.ndarray, cols: np.ndarray, conf: np.ndarray, n_rows: int) -> list[_Batch]:
    """Group rows by history length into padded batches (rows without history are skipped: they stay 0)."""
    order = np.argsort(rows, kind="stable")
    rows, cols, conf = rows[order], cols[order], conf[order]
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    active = np.nonzero(counts)[0]
    active = active[np.argsort(counts[active], kind="stable")]
    lengths = counts[active]
    out: list[_Batch] = []
    i = 0
    while i < len(active):
        j = i + 1  # grow the batch while rows × (longest, i.e. last) length stays within budget
        while j < len(active) and (j + 1 - i) * lengths[j] <= _BATCH_ELEMENTS:
            j += 1
        chunk = active[i:j]
        offs = np.arange(lengths[j - 1])[None, :]
        valid = offs < counts[chunk][:, None]
        flat = np.where(valid, starts[chunk][:, None] + offs, 0)
        c = np.where(valid, conf[flat], 0.0).astype(np.float32)
        out.append(_Batch(chunk, np.where(valid, cols[flat], 0), c, np.sqrt(np.maximum(c - 1.0, 0.0))))
        i = j
    return out


def _solve(fixed: np.ndarray, batches: list[_Batch], reg: float, out: np.ndarray) -> None:
    """x_r = (FᵀF + Fᵀ(C_r − I)F + λI)⁻¹ Fᵀ C_r 1, for every row r with history."""
    f = fixed.shape[1]
    gram = fixed.T @ fixed + np.float32(reg) * np.eye(f, dtype=np.float32)
    for b in batches:
        fp = fixed[b.cols]  # (B, L, f)
        scaled = fp * b.sqrt_extra[..., None]  # Fᵀ(C−I)F = SᵀS with S = sqrt(C−I)·F
        a = gram[None] + scaled.transpose(0, 2, 1) @ scaled
        rhs = np.einsum("blf,bl->bf", fp, b.conf)
        out[b.rows] = np.linalg.solve(a, rhs[..., None])[..., 0]


def train_als(inter: Interactions, cfg: ALSConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 (user_factors, item_factors); deterministic for a given config and data."""
    rng = np.random.default_rng(cfg.seed)
    conf = 1.0 + cfg.alpha * inter.weights.astype(np.float64)
    user_batches = _batches(inter.users, inter.items, conf, inter.n_users)
    item_batches = _batches(inter.items, inter.users, conf, inter.n_items)
    users = np.zeros((inter.n_users, cfg.factors), dtype=np.float32)
    items = rng.normal(0.0, 0.1, (inter.n_items, cfg.factors)).astype(np.float32)
    for _ in range(cfg.iterations):
        _solve(items, user_batches, cfg.regularization, users)
        _solve(users, item_batches, cfg.regularization, items)
    return users, items


def top_n(scores: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n best scores, best first, skipping `exclude` (brute force: argpartition + sort)."""
    if exclude is not None and len(exclude):
        scores = scores.copy()
        scores[exclude] = -np.inf
    n = min(n, len(scores))
    part = np.argpartition(-scores, n - 1)[:n]
    best = part[np.argsort(-scores[part], kind="stable")]
    if exclude is not None and len(exclude):
        best = best[np.isfinite(scores[best])]
    return best


@dataclass
class FactorModel:
    """A trained model version: what the service's `model_inference` stage scores with."""

    version: str
    user_factors: np.ndarray
    item_factors: np.ndarray
    trained_at: float = field(default_factory=time.time)  # unix seconds: the service exports its staleness

    @classmethod
    def fit(cls, version: str, inter: Interactions, cfg: ALSConfig) -> FactorModel:
        users, items = train_als(inter, cfg)
        return cls(version, users, items)

    @property
    def factors(self) -> int:
        return self.item_factors.shape[1]

    def scores(self, user: int, items: np.ndarray | None = None) -> np.ndarray:
        table = self.item_factors if items is None else self.item_factors[items]
        return table @ self.user_factors[user]

    def recommend(self, user: int, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        return top_n(self.scores(user), n, exclude)


@dataclass
class PopularityModel:
    """Most-interacted items first: the cold-start and fallback strategy."""

    counts: np.ndarray
    version: str = "popularity"
    trained_at: float = field(default_factory=time.time)  # unix seconds

    @classmethod
    def fit(cls, inter: Interactions) -> PopularityModel:
        return cls(inter.item_counts())

    def scores(self, user: int, items: np.ndarray | None = None) -> np.ndarray:
        return self.counts if items is None else self.counts[items]

    def recommend(self, user: int, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        return top_n(self.counts.astype(np.float64), n, exclude)


# The two A/B arms the service serves; variant → model configuration.
ARMS: dict[str, tuple[str, ALSConfig]] = {
    "A": ("als-f32-v1", ALSConfig(factors=32, regularization=0.1)),
    "B": ("als-f64-v2", ALSConfig(factors=64, regularization=0.3)),
}


def train_arms(inter: Interactions, seed: int = 0, iterations: int = 10) -> dict[str, FactorModel]:
    """Train both A/B arms on the same data (seeded, so both processes of a split deployment agree)."""
    return {variant: FactorModel.fit(version, inter, ALSConfig(cfg.factors, cfg.regularization, cfg.alpha,
                                                                iterations, seed))
            for variant, (version, cfg) in ARMS.items()}
