"""ALS against the popularity baseline on data with known latent structure; determinism; metric maths."""

from __future__ import annotations

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from recommender.data import generate, split
from recommender.evaluate import (
    evaluate,
    intra_list_diversity,
    novelty,
    offline_summary,
    prometheus_text,
    rank_metrics,
)
from recommender.model import ALSConfig, FactorModel, PopularityModel, top_n, train_als


def test_als_beats_popularity_on_ndcg_with_margin() -> None:
    world = generate(3, n_users=900, n_items=500)
    train, test = split(world.interactions, seed=3)
    als = FactorModel.fit("als", train, ALSConfig(factors=24, iterations=8, seed=3))
    pop = PopularityModel.fit(train)
    als_m = evaluate(als, train, test, world.catalog)
    pop_m = evaluate(pop, train, test, world.catalog)
    assert als_m["ndcg@10"] > pop_m["ndcg@10"] * 1.3 and als_m["ndcg@10"] - pop_m["ndcg@10"] > 0.03
    assert als_m["recall@10"] > pop_m["recall@10"]
    assert als_m["coverage"] > pop_m["coverage"]  # personalisation spreads over the catalog
    assert als_m["novelty"] > pop_m["novelty"]


def test_training_is_deterministic_under_a_seed_and_differs_across_seeds() -> None:
    world = generate(5, n_users=400, n_items=200)
    cfg = ALSConfig(factors=16, iterations=4, seed=11)
    u1, i1 = train_als(world.interactions, cfg)
    u2, i2 = train_als(world.interactions, cfg)
    assert np.array_equal(u1, u2) and np.array_equal(i1, i2)
    _, i3 = train_als(world.interactions, ALSConfig(factors=16, iterations=4, seed=12))
    assert not np.array_equal(i1, i3)
    assert np.isfinite(u1).all() and np.abs(u1).sum() > 0


def test_als_matches_a_per_user_reference_solve() -> None:
    """The batched half-step equals the textbook per-user normal equations."""
    world = generate(9, n_users=120, n_items=80)
    inter = world.interactions
    cfg = ALSConfig(factors=8, iterations=1, regularization=0.5, alpha=4.0, seed=2)
    users, items = train_als(inter, cfg)
    rng = np.random.default_rng(cfg.seed)
    y0 = rng.normal(0.0, 0.1, (inter.n_items, cfg.factors)).astype(np.float32).astype(np.float64)
    u = int(np.bincount(inter.users).argmax())
    mask = inter.users == u
    c = 1.0 + cfg.alpha * inter.weights[mask]
    yu = y0[inter.items[mask]]
    a = y0.T @ y0 + (yu.T * (c - 1.0)) @ yu + cfg.regularization * np.eye(cfg.factors)
    # users were solved against the initial item factors before items moved
    expected = np.linalg.solve(a, yu.T @ c)
    first_users, _ = train_als(inter, ALSConfig(8, 0.5, 4.0, 1, 2))
    assert np.allclose(first_users[u], expected, rtol=1e-3, atol=1e-4)
    assert np.array_equal(first_users, users)


def test_rank_metrics_on_a_small_list() -> None:
    m = rank_metrics(np.array([5, 1, 7, 2]), np.array([1, 2, 9]), k=4)
    assert m.precision == 0.5 and abs(m.recall - 2 / 3) < 1e-12
    assert m.rr == 0.5
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert abs(m.ndcg - dcg / idcg) < 1e-12


def test_diversity_novelty_and_top_n() -> None:
    world = generate(1, n_users=50, n_items=60)
    cat = world.catalog
    same = np.flatnonzero(cat.categories == cat.categories[0])[:3]
    assert intra_list_diversity(same, cat) == 0.0
    mixed = np.array([np.flatnonzero(cat.categories == c)[0] for c in np.unique(cat.categories)[:3]])
    assert intra_list_diversity(mixed, cat) == 1.0
    popular, rare = np.argmax(cat.popularity), np.argmin(cat.popularity)
    assert novelty(np.array([rare]), cat) > novelty(np.array([popular]), cat)
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert top_n(scores, 2).tolist() == [1, 3]
    assert top_n(scores, 3, exclude=np.array([1])).tolist() == [3, 2, 0]


def test_offline_summary_and_prometheus_gauges() -> None:
    summary = offline_summary(generate(2, n_users=400, n_items=200), seed=2, iterations=4)
    assert set(summary["models"]) == {"als-f32-v1", "als-f64-v2", "popularity"}
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(summary))}
    ndcg = {s.labels["model_version"]: s.value for s in families["reco_model_ndcg"].samples}
    assert set(ndcg) == set(summary["models"])
    assert all(abs(ndcg[v] - m["ndcg@10"]) < 1e-5 for v, m in summary["models"].items())
    assert {"reco_model_catalog_coverage", "reco_model_intra_list_diversity", "reco_model_novelty"} <= set(
        families)
