"""The synthetic world's shape and the MovieLens-style loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recommender.data import generate, load_movielens_csv, split, world_from_ratings, write_movielens_csv


def test_world_has_power_law_popularity_activity_skew_and_cold_users() -> None:
    world = generate(0, n_users=1000, n_items=500)
    counts = np.sort(world.interactions.item_counts())[::-1]
    assert counts[:50].sum() > 0.3 * counts.sum()  # top 10 % of items take a large share
    activity = np.bincount(world.interactions.users, minlength=1000)
    assert np.percentile(activity[~world.new_users], 95) > 4 * np.median(activity[~world.new_users])
    assert world.new_users.any() and (activity[world.new_users] == 0).all()
    assert len(world.catalog.prices) == 500 and (world.catalog.prices > 0).all()
    assert abs(world.catalog.popularity.sum() - 1.0) < 1e-9
    again = generate(0, n_users=1000, n_items=500)
    assert np.array_equal(again.interactions.items, world.interactions.items)


def test_split_holds_out_only_active_users_items() -> None:
    world = generate(4, n_users=300, n_items=150)
    train, test = split(world.interactions, seed=4)
    assert len(train.users) + sum(len(v) for v in test.values()) == len(world.interactions.users)
    history = train.history()
    for u, items in test.items():
        assert not np.isin(items, history[u]).any()


def test_movielens_loader_round_trip(tmp_path: Path) -> None:
    world = generate(6, n_users=80, n_items=40)
    path = tmp_path / "ratings.csv"
    write_movielens_csv(path, world.interactions)
    loaded = load_movielens_csv(path)
    inter = loaded.interactions
    assert len(inter.users) == len(world.interactions.users)
    assert loaded.user_ids[inter.users[0]] == f"u{world.interactions.users[0]}"
    assert loaded.item_ids[inter.items[-1]] == f"i{world.interactions.items[-1]}"
    assert np.array_equal(inter.timestamps, world.interactions.timestamps)
    high = load_movielens_csv(path, min_rating=3.0)
    assert 0 < len(high.interactions.users) < len(inter.users)
    w = world_from_ratings(path)
    assert w.interactions.n_items == inter.n_items and w.catalog.n_items == inter.n_items


def test_movielens_double_colon_format_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::5::978300760\n1::11::3::978302109\n2::10::4::978301968\n")
    loaded = load_movielens_csv(path)
    assert loaded.user_ids == ["1", "2"] and loaded.item_ids == ["10", "11"]
    assert loaded.interactions.weights.tolist() == [5.0, 3.0, 4.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating,timestamp\n1,2,x,3\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: rating is not a number"):
        load_movielens_csv(bad)
