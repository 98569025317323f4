"""Simulated shoppers: clicks from true (latent) relevance with position bias, conversions with prices.

Because relevance comes from the world's hidden factors, a worse ranking (a weaker arm, cold start, a
stale embedding table) shows up as a lower CTR on its own, with no telemetry-side special casing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from recommender.data import World


@dataclass(frozen=True)
class Feedback:
    item: int
    position: int  # 1-based
    click_delay_s: float
    converted: bool
    revenue: float
    conversion_delay_s: float


@dataclass(frozen=True)
class ShopperModel:
    examine_decay: float = 0.8  # P(look at position p) = p ** -decay
    click_scale: float = 0.45
    relevance_slope: float = 1.6
    relevance_mid: float = 1.2
    convert_base: float = 0.18
    price_scale: float = 120.0

    def react(self, world: World, user: int, items: list[int], rng: random.Random) -> list[Feedback]:
        """Independent examine-then-click per position; a click converts with a price-damped chance."""
        if not items:
            return []
        arr = np.asarray(items)
        affinity = world.true_affinity(user, arr)
        positions = np.arange(1, len(arr) + 1)
        p_click = (self.click_scale * positions ** -self.examine_decay
                   / (1.0 + np.exp(-self.relevance_slope * (affinity - self.relevance_mid))))
        out: list[Feedback] = []
        for pos, item, p, aff in zip(positions.tolist(), items, p_click.tolist(), affinity.tolist(), strict=True):
            if rng.random() >= p:
                continue
            price = float(world.catalog.prices[item])
            p_conv = self.convert_base * math.exp(-price / self.price_scale) / (1.0 + math.exp(-aff))
            converted = rng.random() < p_conv
            quantity = 1 + (rng.random() < 0.15)
            out.append(Feedback(item, pos, rng.uniform(0.5, 5.0), converted,
                                round(price * quantity, 2) if converted else 0.0, rng.uniform(1.0, 10.0)))
        return out
