"""The seeded world and both trained model arms, shared by the in-process simulation and the HTTP service
(a module of its own so neither of them imports the other for it)."""

from __future__ import annotations

from functools import lru_cache

from recommender.data import World, generate
from recommender.model import FactorModel, train_arms


@lru_cache(maxsize=4)
def world_and_arms(seed: int) -> tuple[World, dict[str, FactorModel]]:
    """The seeded world and both trained arms (cached: training is the slow part of start-up)."""
    world = generate(seed)
    return world, train_arms(world.interactions, seed)
