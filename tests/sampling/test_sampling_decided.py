"""A decided batch on the DecisionBus (`processor/sampling/decided.py`): a listener that asks for some traces gets
exactly the decisions it would find among every row, whichever store made the batch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from processor.sampling.decided import BatchDecisions
from processor.sampling.native_store import RECORD, rows_with_ids
from processor.sampling.policies.policyset import Decision
from processor.sampling.store import Batch
from processor.stages.base import DecisionBus, ListedDecisions


def native_batch(ids: list[bytes]) -> Batch:
    """A batch as the native store hands it out: records in one bytes object, found by `rows_with_ids`."""
    records = np.zeros(len(ids), dtype=RECORD)
    for row, tid in enumerate(ids):
        records["tid"][row] = np.frombuffer(tid, dtype=np.uint8)
    raw = records.tobytes()
    recs = np.frombuffer(raw, dtype=RECORD)
    size = RECORD.itemsize
    return Batch(len(ids), recs["nlogs"], recs["first"], ("due",), None, (raw, b"", recs),
                 lambda: [raw[at:at + 16] for at in range(0, len(raw), size)],
                 find=lambda wanted: rows_with_ids(raw, recs, wanted))


def listed_batch(ids: list[bytes]) -> Batch:
    """A batch without a finder (the reference store's): rows are found through its ids."""
    n = len(ids)
    return Batch(n, np.zeros(n, dtype=np.int64), np.zeros(n), ("due",), None, None, lambda: list(ids))


# Ids that share their first 8 bytes (the native finder's prefilter) and differ after them.
SAME_LEAD = [b"\x01" * 8 + bytes([i]) * 8 for i in range(4)]
IDS = [*SAME_LEAD, *(bytes([i]) * 16 for i in range(10, 40)), b"\x00" * 16]


@pytest.mark.parametrize("make", [native_batch, listed_batch], ids=["native", "listed"])
@pytest.mark.parametrize("wanted", [
    set(),
    {SAME_LEAD[2]},  # its lead matches three other rows: only the whole id counts
    {SAME_LEAD[0], IDS[20], b"\x00" * 16},
    {b"\x01" * 8 + b"\x09" * 8, b"short", b"\x77" * 16},  # a lead that matches, a bad length, an absent id
    set(IDS),
], ids=["none", "shared-lead", "some", "absent", "all"])
def test_rows_of_finds_exactly_the_wanted_ids(make: Callable[[list[bytes]], Batch], wanted: set[bytes]) -> None:
    batch = make(IDS)
    assert batch.rows_of(wanted) == [(row, tid) for row, tid in enumerate(IDS) if tid in wanted]


def test_among_equals_every_row_filtered_and_the_bus_hands_the_batch_on() -> None:
    decisions = [Decision(False, "probabilistic"), Decision(True, "errors"), Decision(True, "slow")]
    rng = np.random.default_rng(3)
    slots = rng.integers(0, len(decisions), len(IDS)).astype(np.int32)
    kept = np.array([decisions[s].kept for s in slots])
    decided = BatchDecisions(native_batch(IDS), slots, kept, decisions)
    every = list(decided.every())
    assert [tid for tid, _, _ in every] == IDS
    assert all(keep == decisions[s].kept and policy == decisions[s].policy
               for (_, keep, policy), s in zip(every, slots.tolist(), strict=True))
    wanted = {IDS[1], IDS[7], IDS[-1], b"\x55" * 16}
    assert decided.among(wanted) == [row for row in every if row[0] in wanted]

    bus = DecisionBus()
    one_by_one: list[tuple[bytes, bool, str]] = []
    asked: list[list[tuple[bytes, bool, str]]] = []
    bus.subscribe(lambda tid, keep, policy: one_by_one.append((tid, keep, policy)))
    bus.subscribe_batch(lambda batch: asked.append(batch.among(wanted)))
    bus.publish_batch(decided)
    bus.publish(IDS[7], True, "late")
    assert one_by_one == [*every, (IDS[7], True, "late")]
    assert asked == [decided.among(wanted), [(IDS[7], True, "late")]]
    assert ListedDecisions([(IDS[0], False, "x")]).among({IDS[1]}) == []
