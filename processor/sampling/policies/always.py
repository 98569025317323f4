"""`always`: matches every trace (e.g. keep everything from a low-volume service inside an `and`)."""

from __future__ import annotations

import numpy as np

from processor.config_node import Node
from processor.sampling.policies.base import Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchLayout


class Always(Policy):
    kind = "always"

    def matches(self, trace: TraceView, now: float) -> bool:
        return True

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        return lambda f, rows: np.ones(len(rows), dtype=bool)


def build(node: Node, name: str) -> Policy:
    return Always(name)
