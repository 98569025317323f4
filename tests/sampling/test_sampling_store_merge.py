"""Requests buffered by their parse job (`_tracestore` Parsed with `now`, `NativeStore.merged_plainly`,
`TailSampling.job_done`): the job merges a request into the store without the GIL and without the stage's lock
when every (resource, scope) group it names already holds chunks and none of its traces is being decided; a plain
answer then needs no lock at all, any other is read by intake under the lock. What the stage keeps, drops and sends
must be what it does when intake buffers every request, whatever the threads and the flushes do."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from receiver_threads import on_threads
from sampling_helpers import Harness
from test_sampling_store import ALL_KINDS, harness, needs_store, policy_file
from test_sampling_store_ahead import ORDER_FREE_KINDS, sent, workload

from bench.workload import TraceIdRewriter
from processor.native import load

NOGIL = load("nogil")


def through_jobs(h: Harness, raw: bytes, counts: dict[str, int]) -> None:
    """What the pipeline does with the stage's job: run it, then `job_done`, else `on_trace_bytes`."""
    stage = h.stage
    job = stage.prepare_job(raw)
    NOGIL.run_jobs((job,))  # type: ignore[union-attr]
    counts[job.state] = counts.get(job.state, 0) + 1
    done = stage.job_done(raw, job)
    if done is None:
        done = stage.on_trace_bytes(raw)
    else:
        counts["plain"] = counts.get("plain", 0) + 1
    h.traces.extend(done)


def run(h: Harness, requests: list[bytes], jobs: bool) -> tuple[list[tuple[bytes, bool, str]], dict[str, int]]:
    counts: dict[str, int] = {}
    for raw in requests:
        if jobs:
            through_jobs(h, raw, counts)
        else:
            h.traces.extend(h.stage.on_trace_bytes(raw))
        h.clock.now += 0.05
        h._take(h.stage.flush(h.clock.now))
    h.advance(15.0)
    h.shutdown()
    return sorted(h.decisions), counts


@needs_store
@pytest.mark.parametrize("budget", [None, 60_000])
def test_requests_merged_by_their_jobs_are_decided_and_sent_as_intake_would(
        budget: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = policy_file(tmp_path, ALL_KINDS)
    config: dict[str, Any] = {"max_bytes": budget} if budget else {}
    requests = workload()
    plain = harness(True, policies, monkeypatch, **config)
    merged = harness(True, policies, monkeypatch, **config)
    decisions, counts = run(merged, requests, jobs=True)
    assert decisions == run(plain, requests, jobs=False)[0]
    assert sent(merged) == sent(plain) and plain.traces
    assert sum(kept for _, kept, _ in plain.decisions) > 10
    # the first request names new groups (intake asks Python for them); later ones merge in their jobs, and
    # most answers are plain (the job completes them: "buffered")
    merged = counts.get("merged", 0) + counts.get("buffered", 0)
    assert counts["parsed"] >= 1 and merged > len(requests) // 2 and counts.get("plain", 0) == counts["buffered"]
    if budget:  # over budget: the answer is read under the lock, where the buffer is relieved
        assert counts.get("merged", 0) > 0
    else:
        assert counts["buffered"] > len(requests) // 2


@needs_store
def test_threads_merging_in_their_jobs_while_the_stage_flushes_change_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four threads run jobs and `job_done` without the stage's lock, and `on_trace_bytes` under it when the
    answer is not plain, while the main thread flushes; the decisions equal one thread's without jobs."""
    policies = policy_file(tmp_path, ORDER_FREE_KINDS)
    requests = workload(traces=2000, per_request=100)
    expected, _ = run(harness(True, policies, monkeypatch), requests, jobs=False)

    h = harness(True, policies, monkeypatch)
    stage = h.stage
    merged = [0]

    def receive(raw: bytes) -> None:
        job = stage.prepare_job(raw)
        NOGIL.run_jobs((job,))  # type: ignore[union-attr]
        merged[0] += job.state in ("merged", "buffered")
        out = stage.job_done(raw, job)
        if out is None:
            with stage.lock:
                out = stage.on_trace_bytes(raw)
        h.traces.extend(out)

    def timer() -> None:  # the flush timer's calls meanwhile (the clock stands: nothing is due)
        with stage.lock:
            assert not stage.flush(h.clock.now)

    on_threads(requests, receive, meanwhile=timer)
    assert merged[0] > len(requests) // 2
    h.advance(15.0)
    h.shutdown()
    assert sorted(h.decisions) == expected
    assert len(stage.store.traces) == 0


class Native:
    """A `_tracestore.Store` with the Python side a test needs: interned groups by header."""

    def __init__(self, h: Harness) -> None:
        self.store = h.stage.store
        self.native = self.store.native

    def intake(self, raw: bytes, job: Any = None) -> tuple[Any, ...]:
        return self.native.intake(raw, 0.0, self.store._intern, job)

    def job(self, raw: bytes, *budgets: int) -> Any:
        """A job that merges (and with budgets, completes a plain answer itself), run."""
        job = self.native.parse_job(raw, 0.0, *budgets)
        NOGIL.run_jobs((job,))  # type: ignore[union-attr]
        return job


@needs_store
def test_a_job_merges_only_into_groups_that_hold_chunks_and_never_into_traces_being_decided() -> None:
    first, second = workload(traces=300, per_request=100)[:2]
    third = TraceIdRewriter(second).replay(7)  # the same groups, other traces
    n = Native(Harness())
    assert n.job(first).state == "parsed"  # its groups are new: intake asks Python for them
    n.intake(first, None)
    before = n.native.stats()
    job = n.job(second, 1 << 30, 1 << 30)
    assert job.state == "buffered" and n.native.stats()[2] > before[2]  # buffered by the job itself
    dropped, traces, nbytes = n.native.complete_plain(job)
    assert (dropped, traces, nbytes) == (0, *n.native.stats()[:2]) and job.state == "used"
    assert n.native.complete_plain(job) is None  # once
    over = n.job(third, 10, 1 << 30)  # over the trace budget: the answer waits for intake (which relieves)
    assert over.state == "merged" and n.native.complete_plain(over) is None
    assert n.intake(third, over)[5] > 0 and over.state == "used"

    n.native.select_all()  # a batch is open: its traces are being decided
    fresh = TraceIdRewriter(second).replay(8)
    assert n.job(fresh, 1 << 30, 1 << 30).state == "buffered"  # new traces merge meanwhile
    again = n.job(third)  # the third request's traces are in the batch: not touched
    assert again.state == "parsed" and n.native.complete_plain(again) is None
    n.native.abort()
    assert n.intake(third, again)[5] > 0 and again.state == "used"  # the parse is used by intake as before


@needs_store
def test_a_merged_answer_that_needs_the_lock_stays_with_the_job_for_intake() -> None:
    first, second = workload(traces=200, per_request=100)[:2]
    n = Native(Harness(max_spans_per_trace=2))  # traces reach max_spans: their ids must be decided at once
    n.intake(first)
    job = n.job(second, 1 << 30, 1 << 30)
    assert job.state == "merged"  # not buffered with a plain answer: traces reached max_spans
    assert n.native.complete_plain(job) is None and job.state == "merged"
    full, *_ = n.intake(second, job)  # read, not merged again
    assert full and job.state == "used"
    assert sorted(n.native.ids()) == sorted(set(n.native.ids()))


def decide_all(native: Any) -> None:
    """Every buffered trace decided and dropped (code 0), as a flush would."""
    native.select_all()
    native.finish(bytes(4 * native.batch_size()))


@needs_store
def test_pins_keep_a_group_until_the_answer_is_read_and_a_dropped_job_lets_go() -> None:
    first, second = workload(traces=200, per_request=100)[:2]
    n = Native(Harness())
    n.intake(first)
    job = n.job(second)
    assert job.state == "merged"
    decide_all(n.native)  # the first request's traces and the job's: only the job's pins are left
    pinned = sorted(gid for gid in n.store.groups.by_id if n.native.refcount(gid) > 0)
    assert pinned and n.native.stats()[0] == 0
    assert n.native.complete_plain(job) is None
    unused = n.intake(second, job)[4]  # read under the stage's lock, where Python may forget them
    assert sorted(unused) == pinned and job.state == "used"
    assert all(n.native.refcount(gid) == 0 for gid in pinned)

    m = Native(Harness())
    m.intake(first)
    dropped = m.job(second)
    assert dropped.state == "merged"
    del dropped  # never completed: its pins go with it
    gc.collect()
    decide_all(m.native)
    assert all(m.native.refcount(gid) == 0 for gid in m.store.groups.by_id)
