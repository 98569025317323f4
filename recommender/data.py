"""Interaction data: a seedable synthetic world with known structure, and a MovieLens-style CSV loader.

The synthetic world keeps its *true* latent factors so the simulator can draw clicks from real relevance
and the tests can check that a trained model recovers some of that structure.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CATEGORIES = ("books", "electronics", "home", "garden", "toys", "fashion", "beauty", "sports", "grocery", "music")


@dataclass
class Catalog:
    """Items with a category and a price; `popularity` is each item's share of all interactions."""

    categories: np.ndarray  # (n_items,) int index into CATEGORIES
    prices: np.ndarray  # (n_items,) float
    popularity: np.ndarray  # (n_items,) float, sums to 1

    @property
    def n_items(self) -> int:
        return len(self.prices)


@dataclass
class Interactions:
    """Implicit feedback as COO triplets plus the per-user item lists the service reads as history."""

    n_users: int
    n_items: int
    users: np.ndarray  # (nnz,) int32
    items: np.ndarray  # (nnz,) int32
    weights: np.ndarray  # (nnz,) float32, e.g. interaction count or rating
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def history(self) -> list[np.ndarray]:
        """Items per user, in insertion order (users with no interactions get an empty array)."""
        order = np.argsort(self.users, kind="stable")
        counts = np.bincount(self.users, minlength=self.n_users)
        return np.split(self.items[order], np.cumsum(counts)[:-1])

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items).astype(np.float64)


@dataclass
class World:
    """A synthetic population: true factors, the observed interactions and the catalog."""

    user_factors: np.ndarray  # (n_users, d) true taste
    item_factors: np.ndarray  # (n_items, d) true attributes
    item_bias: np.ndarray  # (n_items,) log-popularity
    new_users: np.ndarray  # (n_users,) bool: no history at all (cold start)
    interactions: Interactions
    catalog: Catalog

    def true_affinity(self, user: int, items: np.ndarray) -> np.ndarray:
        """Latent relevance the simulated users act on (not visible to the model)."""
        d = self.user_factors.shape[1]
        return self.item_factors[items] @ self.user_factors[user] / np.sqrt(d)


def generate(seed: int = 0, n_users: int = 1500, n_items: int = 800, dim: int = 12,
             new_user_share: float = 0.08, zipf: float = 1.1, mean_activity: float = 30.0,
             taste: float = 3.0) -> World:
    """Draw a world: power-law item popularity, log-normal user activity, a share of brand-new users.

    Each user's items are sampled without replacement from softmax(taste * affinity + log-popularity)
    using the Gumbel top-k trick, all users at once.
    """
    rng = np.random.default_rng(seed)
    user_f = rng.standard_normal((n_users, dim))
    item_f = rng.standard_normal((n_items, dim))
    ranks = rng.permutation(n_items) + 1
    item_bias = -zipf * np.log(ranks)
    activity = np.clip(rng.lognormal(np.log(mean_activity) - 0.5, 1.0, n_users), 1, n_items // 2).astype(int)
    new_users = rng.random(n_users) < new_user_share
    activity[new_users] = 0

    logits = taste * (user_f @ item_f.T) / np.sqrt(dim) + item_bias[None, :]
    logits += rng.gumbel(size=logits.shape)
    order = np.argsort(-logits, axis=1)
    rows, cols = [], []
    for u in np.nonzero(activity)[0]:
        picked = order[u, : activity[u]]
        rows.append(np.full(len(picked), u, dtype=np.int32))
        cols.append(picked.astype(np.int32))
    users = np.concatenate(rows)
    items = np.concatenate(cols)
    weights = (1 + rng.poisson(1.0, len(users))).astype(np.float32)
    timestamps = np.sort(rng.integers(1_600_000_000, 1_700_000_000, len(users)))
    inter = Interactions(n_users, n_items, users, items, weights, timestamps)

    # Categories follow the latent space (a random projection), so diversity is a real trade-off.
    proj = rng.standard_normal((dim, len(CATEGORIES)))
    categories = np.argmax(item_f @ proj, axis=1)
    base_price = np.exp(rng.normal(3.0, 0.6, len(CATEGORIES)))
    prices = np.round(base_price[categories] * rng.lognormal(0.0, 0.35, n_items), 2)
    counts = inter.item_counts() + 1.0
    catalog = Catalog(categories, prices, counts / counts.sum())
    return World(user_f, item_f, item_bias, new_users, inter, catalog)


def split(inter: Interactions, test_share: float = 0.2, min_items: int = 5,
          seed: int = 0) -> tuple[Interactions, dict[int, np.ndarray]]:
    """Hold out a random `test_share` of each sufficiently active user's items for evaluation."""
    rng = np.random.default_rng(seed)
    held = rng.random(len(inter.users)) < test_share
    counts = np.bincount(inter.users, minlength=inter.n_users)
    held &= counts[inter.users] >= min_items
    train = Interactions(inter.n_users, inter.n_items, inter.users[~held], inter.items[~held],
                         inter.weights[~held], inter.timestamps[~held] if len(inter.timestamps) else inter.timestamps)
    test: dict[int, list[int]] = {}
    for u, i in zip(inter.users[held].tolist(), inter.items[held].tolist(), strict=True):
        test.setdefault(u, []).append(i)
    return train, {u: np.asarray(v) for u, v in test.items()}


@dataclass
class LoadedRatings:
    """A MovieLens-style file mapped to dense ids; `user_ids`/`item_ids` map back to the file's ids."""

    interactions: Interactions
    user_ids: list[str]
    item_ids: list[str]


def load_movielens_csv(path: str | Path, min_rating: float = 0.0) -> LoadedRatings:
    """Read `user,item,rating,timestamp` rows (header optional, `,` or `::` or tab separated).

    Ratings below `min_rating` are dropped; the rating becomes the confidence weight.
    """
    text = Path(path).read_text(encoding="utf-8")
    sep = "::" if "::" in text.splitlines()[0] else ("\t" if "\t" in text.splitlines()[0] else ",")
    user_ix: dict[str, int] = {}
    item_ix: dict[str, int] = {}
    users, items, weights, stamps = [], [], [], []
    lines = text.splitlines()
    rows = (line.split(sep) for line in lines) if sep == "::" else csv.reader(lines, delimiter=sep)
    for lineno, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 3:
            raise ValueError(f"{path}:{lineno}: expected user,item,rating[,timestamp], got {len(row)} fields")
        try:
            rating = float(row[2])
        except ValueError:
            if lineno == 1:
                continue  # header
            raise ValueError(f"{path}:{lineno}: rating is not a number") from None
        if rating < min_rating:
            continue
        u = user_ix.setdefault(row[0].strip(), len(user_ix))
        i = item_ix.setdefault(row[1].strip(), len(item_ix))
        users.append(u)
        items.append(i)
        weights.append(rating)
        stamps.append(int(float(row[3])) if len(row) > 3 and row[3].strip() else 0)
    inter = Interactions(len(user_ix), len(item_ix), np.asarray(users, dtype=np.int32),
                         np.asarray(items, dtype=np.int32), np.asarray(weights, dtype=np.float32),
                         np.asarray(stamps, dtype=np.int64))
    return LoadedRatings(inter, list(user_ix), list(item_ix))


def write_movielens_csv(path: str | Path, inter: Interactions, header: bool = True) -> None:
    """Write interactions in the loader's format (ratings clipped to 1..5)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        if header:
            out.writerow(["user", "item", "rating", "timestamp"])
        stamps = inter.timestamps if len(inter.timestamps) else np.zeros(len(inter.users), dtype=np.int64)
        for u, i, w, t in zip(inter.users.tolist(), inter.items.tolist(), inter.weights.tolist(),
                              stamps.tolist(), strict=True):
            out.writerow([f"u{u}", f"i{i}", min(5.0, max(1.0, w)), t])


def world_from_ratings(path: str | Path, seed: int = 0, min_rating: float = 0.0) -> World:
    """Wrap a ratings file as a World for offline evaluation. The file has no genres or prices, so items
    get seeded placeholder categories and prices, and the true factors are empty (no click simulation)."""
    loaded = load_movielens_csv(path, min_rating)
    inter = loaded.interactions
    rng = np.random.default_rng(seed)
    counts = inter.item_counts() + 1.0
    catalog = Catalog(rng.integers(0, len(CATEGORIES), inter.n_items),
                      np.round(np.exp(rng.normal(3.0, 0.6, inter.n_items)), 2), counts / counts.sum())
    has_history = np.bincount(inter.users, minlength=inter.n_users) > 0
    return World(np.zeros((inter.n_users, 0)), np.zeros((inter.n_items, 0)), np.log(counts), ~has_history,
                 inter, catalog)
