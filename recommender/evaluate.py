"""Offline evaluation on a held-out split, and its export for the dashboards' model-quality gauges.

Exports: a JSON summary (`write_summary`) and the same numbers as a Prometheus text-exposition file
(`prometheus_text`). The service itself serves them, for the versions it loads, on its own /metrics
(`recommender/quality.py`), which is what the dashboards read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from recommender.data import Catalog, Interactions, World, split
from recommender.model import PopularityModel, train_arms


class Recommender(Protocol):
    version: str

    def recommend(self, user: int, n: int, exclude: np.ndarray | None = None) -> np.ndarray: ...


@dataclass
class ListMetrics:
    """Per-list ranking metrics against the user's held-out items."""

    precision: float
    recall: float
    ndcg: float
    rr: float


def rank_metrics(recommended: np.ndarray, relevant: np.ndarray, k: int) -> ListMetrics:
    top = recommended[:k]
    hits = np.isin(top, relevant)
    n_hits = float(hits.sum())
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    ideal = discounts[: min(k, len(relevant))].sum()
    first = np.flatnonzero(hits)
    return ListMetrics(
        precision=n_hits / k,
        recall=n_hits / len(relevant) if len(relevant) else 0.0,
        ndcg=float((hits * discounts).sum() / ideal) if ideal > 0 else 0.0,
        rr=1.0 / (first[0] + 1) if len(first) else 0.0,
    )


def intra_list_diversity(items: np.ndarray, catalog: Catalog) -> float:
    """Share of item pairs in the list from different categories (0 = all one category)."""
    if len(items) < 2:
        return 0.0
    cats = catalog.categories[items]
    same = (cats[:, None] == cats[None, :]).sum() - len(items)
    return 1.0 - same / (len(items) * (len(items) - 1))


def novelty(items: np.ndarray, catalog: Catalog) -> float:
    """Mean self-information −log2(popularity share): higher means less obvious recommendations."""
    return float(np.mean(-np.log2(catalog.popularity[items]))) if len(items) else 0.0


def evaluate(model: Recommender, train: Interactions, test: dict[int, np.ndarray], catalog: Catalog,
             k: int = 10) -> dict[str, float]:
    """Average the list metrics over test users; coverage is over the union of all lists."""
    history = train.history()
    sums = np.zeros(6)
    shown: set[int] = set()
    for user, relevant in test.items():
        rec = model.recommend(user, k, history[user])
        m = rank_metrics(rec, relevant, k)
        sums += (m.precision, m.recall, m.ndcg, m.rr, intra_list_diversity(rec, catalog), novelty(rec, catalog))
        shown.update(rec.tolist())
    mean = sums / max(1, len(test))
    return {
        f"precision@{k}": float(mean[0]), f"recall@{k}": float(mean[1]), f"ndcg@{k}": float(mean[2]),
        "mrr": float(mean[3]), "diversity": float(mean[4]), "novelty": float(mean[5]),
        "coverage": len(shown) / catalog.n_items, "users": len(test),
    }


def offline_summary(world: World, seed: int = 0, k: int = 10, iterations: int = 10) -> dict:
    """Train both arms and the popularity baseline on one split and evaluate all three."""
    train, test = split(world.interactions, seed=seed)
    models: list[Recommender] = [*train_arms(train, seed, iterations).values(), PopularityModel.fit(train)]
    return {"k": k, "seed": seed, "models": {m.version: evaluate(m, train, test, world.catalog, k) for m in models}}


def write_summary(summary: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


QUALITY_GAUGES = {  # summary key → (metric name, help); also what the service serves (quality.py)
    "ndcg@{k}": ("reco_model_ndcg", "Offline NDCG@k on the held-out split."),
    "precision@{k}": ("reco_model_precision", "Offline precision@k."),
    "recall@{k}": ("reco_model_recall", "Offline recall@k."),
    "mrr": ("reco_model_mrr", "Offline mean reciprocal rank."),
    "coverage": ("reco_model_catalog_coverage", "Share of the catalog appearing in any top-k list."),
    "diversity": ("reco_model_intra_list_diversity", "Mean share of category-distinct pairs per list."),
    "novelty": ("reco_model_novelty", "Mean self-information (bits) of recommended items."),
}


def prometheus_text(summary: dict) -> str:
    """Render the summary as Prometheus text exposition (gauges labelled model_version and k)."""
    k = summary["k"]
    lines: list[str] = []
    for key, (name, help_text) in QUALITY_GAUGES.items():
        key = key.format(k=k)
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for version, metrics in sorted(summary["models"].items()):
            lines.append(f'{name}{{model_version="{version}",k="{k}"}} {metrics[key]:.6g}')
    return "\n".join(lines) + "\n"
