"""One decided batch as the DecisionBus hands it on (`processor/stages/base.py` `DecisionBatch`).

Why: a batch holds thousands of decisions a second, and the usual listener (the exemplar reservoir) waits on a
few hundred traces. Building a trace id and a policy name per row cost a few percent of the hop's GIL time;
here rows are built only for the traces a listener asks about, or all of them for one that wants every one
(the write-ahead log, a per-decision listener)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

from processor.sampling.policies.policyset import Decision
from processor.sampling.store import Batch


class BatchDecisions:
    def __init__(self, batch: Batch, slots: np.ndarray, kept: np.ndarray, decisions: Sequence[Decision]) -> None:
        self.batch = batch
        self.slots = slots
        self.kept = kept
        self.decisions = decisions

    def columns(self) -> tuple[list[bytes], list[bool], list[str]]:
        """Every row: trace ids, kept flags, deciding policies."""
        decisions = self.decisions
        return (self.batch.ids(), self.kept.tolist(), [decisions[slot].policy for slot in self.slots.tolist()])

    def every(self) -> Iterable[tuple[bytes, bool, str]]:
        return zip(*self.columns(), strict=True)

    def among(self, trace_ids: Collection[bytes]) -> list[tuple[bytes, bool, str]]:
        decisions, slots, kept = self.decisions, self.slots, self.kept
        return [(tid, bool(kept[row]), decisions[int(slots[row])].policy)
                for row, tid in self.batch.rows_of(trace_ids)]
