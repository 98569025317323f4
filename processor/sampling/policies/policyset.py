"""Evaluate a set of policies on one whole trace, once: any `drop` match drops, else the first matching
keep policy keeps (and names itself as the reason), else the trace is dropped. `PolicySet.decide` does it per
trace (the reference store), `BatchDecider` for a batch of the native store's traces with the same rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from processor.sampling.policies.base import Needs, Policy, TraceView
from processor.sampling.policies.batch import BatchFacts, BatchLayout

NO_MATCH = "none"
# Kept when evaluating the trace failed: losing a trace to a bug is worse than keeping one too many.
DECISION_ERROR = "decision_error"


@dataclass(frozen=True, eq=False)
class Decision:
    """Shared per policy (one object per outcome), so the decision cache holds only references."""

    kept: bool
    policy: str
    th: str | None = None  # set when kept by probability: written into tracestate `ot=th:`


class PolicySet:
    def __init__(self, policies: list[Policy]) -> None:
        self.drops = [p for p in policies if p.kind == "drop"]
        self.keeps = [p for p in policies if p.kind != "drop"]
        self.policies = policies
        self.needs = Needs()
        for policy in policies:
            policy.add_needs(self.needs)
        self._keep = {p.name: Decision(True, p.name, p.th) for p in self.keeps}
        self._drop = {p.name: Decision(False, p.name) for p in self.drops}
        self.no_match = Decision(False, NO_MATCH)
        self.on_error = Decision(True, DECISION_ERROR)

    def decide(self, trace: TraceView, now: float) -> Decision:
        for policy in self.drops:
            if policy.matches(trace, now):
                return self._drop[policy.name]
        for policy in self.keeps:
            if policy.matches(trace, now):
                return self._keep[policy.name]
        return self.no_match


class DecisionSlots:
    """Every decision a store hands out, numbered: a batch's decisions are an array of slots (the native store
    keeps them as codes: slot * 2 + kept). The policy set's outcomes come first, in a fixed order."""

    def __init__(self, policies: PolicySet) -> None:
        self.decisions: list[Decision] = []
        self._slot: dict[int, int] = {}
        self.drop_slots = [self.slot(policies._drop[p.name]) for p in policies.drops]
        self.keep_slots = [self.slot(policies._keep[p.name]) for p in policies.keeps]
        self.no_match = self.slot(policies.no_match)
        self.on_error = self.slot(policies.on_error)
        self._kept = self.kept_array()

    def slot(self, decision: Decision) -> int:
        slot = self._slot.get(id(decision))
        if slot is None:
            slot = self._slot[id(decision)] = len(self.decisions)
            self.decisions.append(decision)
        return slot

    def code(self, decision: Decision) -> int:
        return self.slot(decision) * 2 + int(decision.kept)

    def decision(self, code: int) -> Decision:
        return self.decisions[code >> 1]

    def kept_array(self) -> np.ndarray:
        return np.array([d.kept for d in self.decisions], dtype=bool)

    def kept(self, slots: np.ndarray) -> np.ndarray:
        """Kept or not, per slot of a batch."""
        if len(self._kept) < len(self.decisions):
            self._kept = self.kept_array()
        return self._kept[slots]


class BatchDecider:
    """`PolicySet.decide` for a whole batch of the native store's traces: a decision slot per row. Policies are
    asked in the same order, each only for the rows no earlier policy took (`Policy.batch`), so stateful
    policies (rate_limit) see the traces as the per-trace path would."""

    def __init__(self, policies: PolicySet, layout: BatchLayout, slots: DecisionSlots) -> None:
        self.policies = policies
        self.layout = layout
        self.slots = slots

    def decide(self, facts: BatchFacts, now: float) -> np.ndarray:
        slots = self.slots
        out = np.full(len(facts.recs), -1, dtype=np.int32)
        ordered = [*zip(self.policies.drops, slots.drop_slots, strict=True),
                   *zip(self.policies.keeps, slots.keep_slots, strict=True)]
        for policy, slot in ordered:
            rows = np.flatnonzero(out < 0)
            if not len(rows):
                break
            matched = policy.batch(self.layout, now)(facts, rows)
            out[rows[matched]] = slot
        out[out < 0] = slots.no_match
        for row in facts.failed:
            out[row] = slots.on_error
        return out
