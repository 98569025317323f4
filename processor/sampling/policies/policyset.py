"""Evaluate a set of policies on one whole trace, once: any `drop` match drops, else the first matching
keep policy keeps (and names itself as the reason), else the trace is dropped."""

from __future__ import annotations

from dataclasses import dataclass

from processor.sampling.policies.base import Needs, Policy, TraceView

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
