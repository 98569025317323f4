"""The exporter's retry timing on a driven clock: backoff, jitter, caps, RetryInfo, give-up and the shutdown
deadline, with a scripted transport and no wall-clock sleeps (`processor/exporter.py`).

The one end-to-end outage case with real processes and real time is tests/foundation/test_exporter_spill.py."""

from __future__ import annotations

import random
import threading

import pytest
from fake_clock import FakeClock
from otlp_peers import wait_until
from prometheus_client import CollectorRegistry

from processor.config import ExporterConfig, RetryConfig
from processor.exporter import Exporter, QueuedExport, SendError
from processor.telemetry import HopMetrics

ITEMS = 7  # spans in the one request each test sends


class Jitter(random.Random):
    """Jitter pinned to one point of its range: `at=0` is the low end, `at=1` the high end."""

    def __init__(self, at: float) -> None:
        super().__init__(0)
        self.at = at
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return a + (b - a) * self.at


def unavailable(retry_after: float | None = None) -> SendError:
    return SendError("unavailable", True, retry_after)


class ScriptedTransport:
    """Answers each send with the next scripted outcome (a SendError to raise, or rejected items to return;
    the last one repeats) and records the clock at every attempt."""

    def __init__(self, clock: FakeClock, outcomes: list[SendError | int]) -> None:
        self.clock = clock
        self.outcomes = outcomes
        self.attempts: list[float] = []
        self.closed = False

    def send(self, item: QueuedExport) -> int:
        self.attempts.append(self.clock.now())
        outcome = self.outcomes[min(len(self.attempts), len(self.outcomes)) - 1]
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    def close(self) -> None:
        self.closed = True

    def gaps(self) -> list[float]:
        return [round(b - a, 9) for a, b in zip(self.attempts, self.attempts[1:], strict=False)]


class Rig:
    """One exporter (one consumer) on a fake clock and a scripted transport, with its own registry."""

    def __init__(self, outcomes: list[SendError | int], retry: RetryConfig,
                 rng: random.Random | None = None) -> None:
        self.clock = FakeClock()
        self.transport = ScriptedTransport(self.clock, outcomes)
        self.registry = CollectorRegistry()
        cfg = ExporterConfig(endpoint="unused:4317", consumers=1, retry=retry)
        self.exporter = Exporter(cfg, HopMetrics.create(self.registry), transport=self.transport,
                                 clock=self.clock, rng=rng or Jitter(0.5))
        self.started_at = self.clock.now()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"signal": "spans", **labels}) or 0.0

    def settled(self) -> float:
        """Items delivered, rejected by the peer or given up on."""
        return self.metric("recohop_exported_items_total") + self.metric(
            "recohop_export_partial_rejected_items_total") + sum(
            s.value for f in self.registry.collect() for s in f.samples
            if s.name == "recohop_export_failed_items_total")

    def send_one(self) -> Rig:
        """Queue one request and wait (for real: consumer threads are real) until it is settled."""
        self.exporter.start()
        self.exporter.submit("traces", b"request", ITEMS)
        wait_until(lambda: self.settled() == ITEMS, "the request delivered or counted as failed", timeout=10,
                   seen=lambda: {"attempts": self.transport.attempts, "settled": self.settled()})
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        return self.exporter.stop(timeout)


@pytest.mark.parametrize(("at", "factor"), [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)])
def test_backoff_doubles_within_its_jitter_and_caps_at_max_interval(at: float, factor: float) -> None:
    """Delays are backoff × U(0.5, 1.5) with backoff 1, 2, 4, 8, 8 … (max_interval 8); a jittered delay never
    exceeds max_interval either."""
    rig = Rig([unavailable()] * 7 + [0], RetryConfig(initial_interval=1.0, max_interval=8.0,
                                                     max_elapsed_time=1000.0), rng=Jitter(at)).send_one()
    backoffs = [1, 2, 4, 8, 8, 8, 8]
    assert rig.transport.gaps() == [min(b * factor, 8.0) for b in backoffs]
    assert rig.clock.waits == rig.transport.gaps()  # the only waiting done was the backoff itself
    assert rig.metric("recohop_export_retries_total") == 7
    assert rig.metric("recohop_exported_items_total") == ITEMS
    assert rig.stop()


def test_seeded_jitter_stays_in_bounds() -> None:
    rig = Rig([unavailable()] * 12 + [0], RetryConfig(initial_interval=0.5, max_interval=5.0,
                                                      max_elapsed_time=1000.0), rng=random.Random(16)).send_one()
    gaps = rig.transport.gaps()
    assert len(gaps) == 12
    for k, gap in enumerate(gaps):
        backoff = min(0.5 * 2**k, 5.0)
        assert 0.5 * backoff <= gap <= min(1.5 * backoff, 5.0), (k, gap)
    uncapped = [gap for gap in gaps if gap < 5.0]
    assert len(uncapped) >= 5 and len(set(uncapped)) == len(uncapped)  # really jittered, not a fixed schedule
    assert rig.stop()


def test_max_elapsed_time_gives_up_and_counts_retries_exhausted() -> None:
    """The last delay is cut so the final attempt falls exactly at max_elapsed_time; then the request is
    dropped and counted."""
    rig = Rig([unavailable()], RetryConfig(initial_interval=1.0, max_interval=4.0, max_elapsed_time=10.0),
              rng=Jitter(0.5)).send_one()
    assert rig.transport.gaps() == [1.0, 2.0, 4.0, 3.0]
    assert rig.transport.attempts[-1] - rig.started_at == 10.0
    assert rig.metric("recohop_export_failed_items_total", reason="retries_exhausted") == ITEMS
    assert rig.metric("recohop_export_retries_total") == 4
    assert rig.metric("recohop_exported_items_total") == 0
    assert rig.stop()


def test_server_retry_info_wins_over_backoff_and_jitter() -> None:
    """The peer's RetryInfo delay is used as is (no jitter drawn), still capped by max_interval."""
    jitter = Jitter(1.0)
    rig = Rig([unavailable(2.5), unavailable(0.01), unavailable(60.0), 0],
              RetryConfig(initial_interval=0.1, max_interval=30.0, max_elapsed_time=1000.0), rng=jitter).send_one()
    assert rig.transport.gaps() == [2.5, 0.01, 30.0]
    assert jitter.draws == 0
    assert rig.metric("recohop_exported_items_total") == ITEMS
    assert rig.stop()


def test_invalid_argument_is_not_retried() -> None:
    rig = Rig([SendError("invalid_argument", False)], RetryConfig()).send_one()
    assert len(rig.transport.attempts) == 1
    assert rig.clock.waits == []
    assert rig.metric("recohop_export_failed_items_total", reason="invalid_argument") == ITEMS
    assert rig.metric("recohop_export_retries_total") == 0
    assert rig.stop()


def test_partial_success_counts_what_the_peer_rejected() -> None:
    rig = Rig([3], RetryConfig()).send_one()
    assert rig.metric("recohop_export_partial_rejected_items_total") == 3
    assert rig.metric("recohop_exported_items_total") == ITEMS - 3
    assert rig.stop()


def test_shutdown_deadline_interrupts_a_backoff() -> None:
    """stop(2 s) during a 60 s backoff: one last attempt at the deadline, not after the backoff; the request is
    then counted as failed for the shutdown (settled: stop() has nothing left queued to report)."""
    rig = Rig([unavailable()], RetryConfig(initial_interval=60.0, max_interval=60.0, max_elapsed_time=300.0),
              rng=Jitter(0.5))
    rig.clock.hold_next_wait()
    rig.exporter.start()
    rig.exporter.submit("traces", b"request", ITEMS)
    assert rig.clock.held.wait(10), "the exporter never began its backoff"
    stopped_at = rig.clock.now()
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(rig.stop(timeout=2.0)))
    stopper.start()
    stopper.join(10)
    assert result == [True]
    assert rig.clock.waits == [60.0, 2.0]  # the backoff, then only what was left until the deadline
    assert rig.transport.attempts == [rig.started_at, stopped_at + 2.0]
    assert rig.metric("recohop_export_failed_items_total", reason="shutdown") == ITEMS
    assert rig.metric("recohop_export_failed_items_total", reason="retries_exhausted") == 0
    assert rig.transport.closed


def test_stop_counts_what_was_still_queued_as_shutdown() -> None:
    """Two requests, one consumer busy backing off on the first: the second is still queued at the deadline."""
    rig = Rig([unavailable()], RetryConfig(initial_interval=60.0, max_interval=60.0, max_elapsed_time=300.0))
    rig.clock.hold_next_wait()
    rig.exporter.start()
    rig.exporter.submit("traces", b"first", ITEMS)
    assert rig.clock.held.wait(10), "the exporter never began its backoff"
    rig.exporter.submit("logs", b"second", 2)  # another signal: not joined into the first call
    assert rig.stop(timeout=1.0) is False
    assert rig.metric("recohop_export_failed_items_total", reason="shutdown") == ITEMS
    assert rig.registry.get_sample_value("recohop_export_failed_items_total",
                                         {"signal": "log_records", "reason": "shutdown"}) == 2
