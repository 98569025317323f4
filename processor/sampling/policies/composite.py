"""Composites: `and` (every sub-policy matches) and `not` (the sub-policy does not match).
Sub-policies are ordinary policies, built by the factory, which hands its `build_policy` in (`BuildPart`)."""

from __future__ import annotations

import numpy as np

from processor.config_node import Node
from processor.sampling.policies.base import BuildPart, Needs, Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchFacts, BatchLayout


class And(Policy):
    kind = "and"

    def __init__(self, name: str, parts: list[Policy]) -> None:
        super().__init__(name)
        self.parts = parts
        # Kept "by probability" when a probabilistic part took part in the keep.
        self.th = next((p.th for p in parts if p.th is not None), None)

    def add_needs(self, needs: Needs) -> None:
        for part in self.parts:
            part.add_needs(needs)

    def matches(self, trace: TraceView, now: float) -> bool:
        return all(part.matches(trace, now) for part in self.parts)

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        parts = [part.batch(layout, now) for part in self.parts]

        def all_of(f: BatchFacts, rows: np.ndarray) -> np.ndarray:
            out = np.ones(len(rows), dtype=bool)
            for part in parts:  # later parts only see rows still matching (as `all` short-circuits)
                live = np.flatnonzero(out)
                if not len(live):
                    break
                out[live] = part(f, rows[live])
            return out
        return all_of


class Not(Policy):
    kind = "not"

    def __init__(self, name: str, part: Policy) -> None:
        super().__init__(name)
        self.part = part

    def add_needs(self, needs: Needs) -> None:
        self.part.add_needs(needs)

    def matches(self, trace: TraceView, now: float) -> bool:
        return not self.part.matches(trace, now)

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        inner = self.part.batch(layout, now)
        return lambda f, rows: ~inner(f, rows)


def build_and(node: Node, name: str, build_policy: BuildPart) -> Policy:
    parts = [build_policy(child, f"{name}[{i}]") for i, child in enumerate(node.children("policies"))]
    if not parts:
        raise node.error("policies", "a non-empty list of sub-policies")
    return And(name, parts)


def build_not(node: Node, name: str, build_policy: BuildPart) -> Policy:
    if node.raw("policy") is None:
        raise node.error("policy", "a sub-policy mapping (required)")
    return Not(name, build_policy(node.child("policy"), f"{name}.policy"))
