"""Traffic simulator: a frontend that sends recommendation requests (with A/B baggage) and user feedback.

`run(...)` is the Python API behind `python -m recommender simulate`. The service either runs in this
process (the default; headers still go through inject → carrier → extract) or behind HTTP in another
process (`service_url`, see `recommender/http_service.py`).
"""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from recommender.behaviour import Feedback, ShopperModel
from recommender.experiment import inject
from recommender.faults import PLACEMENTS, Faults
from recommender.groundtruth import GroundTruth
from recommender.http_service import HttpClient
from recommender.quality import ModelQualityMetrics, offline_evaluation
from recommender.service import CLICK, CONVERSION, RecommendationService, RecoOutcome, user_id, user_index
from recommender.telemetry import SCOPE, SeededIdGenerator, make_provider
from recommender.trained import world_and_arms  # also imported from here by the demo and the benches

PLACEMENT_WEIGHTS = {"home": 0.45, "product_page": 0.3, "cart": 0.15, "email": 0.1}


class Transport(Protocol):
    def recommend(self, uid: str, placement: str, headers: dict[str, str], start_ns: int) -> RecoOutcome: ...

    def feedback(self, kind: str, out: RecoOutcome, item: int, position: int, at_ns: int,
                 revenue: float | None) -> None: ...

    def close(self) -> None: ...


@dataclass
class InProcess:
    """Calls the service directly (the carrier dict is the 'wire')."""

    service: RecommendationService

    def recommend(self, uid: str, placement: str, headers: dict[str, str], start_ns: int) -> RecoOutcome:
        return self.service.recommend(uid, placement, headers, start_ns)

    def feedback(self, kind: str, out: RecoOutcome, item: int, position: int, at_ns: int,
                 revenue: float | None) -> None:
        self.service.record_feedback(kind, out, item, position, at_ns, revenue)

    def close(self) -> None:
        pass


ARRIVALS = ("poisson", "even")


def _arrivals(rng: np.random.Generator, rps: float, duration: float, kind: str = "poisson") -> np.ndarray:
    """Arrival offsets in seconds within [0, duration): Poisson (independent users), or `even` (one every
    1/rps seconds: constant offered load, so any rate panel over it must draw a flat line)."""
    if kind == "even":
        return np.arange(int(np.ceil(rps * duration))) / rps
    if kind != "poisson":
        raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {kind!r}")
    gaps = rng.exponential(1.0 / rps, int(rps * duration * 1.3) + 20)
    times = np.cumsum(gaps) - gaps[0]
    while times[-1] < duration:
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rps, len(times)))])
    return times[times < duration]


def run(endpoint: str | None, rps: float, duration: float, seed: int = 0, faults: Faults | None = None, *,
        exporter: SpanExporter | None = None, provider: TracerProvider | None = None,
        service_url: str | None = None, pace: bool = False, ground_truth: str | None = None,
        dry_run: bool = False, quality: ModelQualityMetrics | None = None,
        arrivals: str = "poisson") -> GroundTruth:
    """Simulate `duration` seconds of traffic at `rps`; return (and optionally write) the ground truth.

    Spans go to `provider` if given, else to `exporter`, else OTLP gRPC at `endpoint`; `dry_run` creates
    spans that go nowhere (same seeded ids and ground truth as a real run). `pace` spreads requests over
    real time; otherwise they are sent as fast as possible with timestamps ending now. `quality`: the
    in-process service publishes the model versions it loads there, with their offline evaluation (over
    HTTP the service process has its own, `serve --metrics-listen`). `arrivals`: poisson or even.
    """
    faults = faults or Faults()
    world, arms = world_and_arms(seed)
    rng = np.random.default_rng(seed)
    offsets = _arrivals(rng, rps, duration, arrivals)
    n = len(offsets)
    activity = np.bincount(world.interactions.users, minlength=len(world.new_users))
    weights = np.where(world.new_users, 1.0, 1.0 + np.log1p(activity))
    users = rng.choice(len(weights), size=n, p=weights / weights.sum())
    placements = rng.choice(len(PLACEMENTS), size=n, p=[PLACEMENT_WEIGHTS[p] for p in PLACEMENTS])

    own_provider = provider is None
    if provider is None:  # a dry run keeps the seeded ids but has no span processor: nothing is sent
        provider = (TracerProvider(id_generator=SeededIdGenerator(seed)) if dry_run
                    else make_provider(exporter, endpoint, seed))
    tracer = provider.get_tracer(SCOPE, "0.1.0")
    transport: Transport
    drift_ns = None
    if service_url:
        transport = HttpClient(service_url)
    else:
        evaluation = offline_evaluation(seed) if quality is not None else None
        service = RecommendationService(world, arms, tracer, faults, seed, quality, evaluation)
        transport = InProcess(service)

    truth = GroundTruth(seed, rps, duration, asdict(faults))
    shopper = ShopperModel()
    behaviour_rng = random.Random(f"shoppers:{seed}")
    wall0 = time.perf_counter()
    t0 = time.time_ns() - (0 if pace else int(duration * 1e9))
    if faults.drift and not service_url:  # over HTTP the service process owns its faults
        drift_ns = service.drift_from_ns = t0 + int(faults.drift_start * duration * 1e9)
    pending: list[tuple[int, int, str, RecoOutcome, Feedback, str | None]] = []
    seq = 0

    def emit_due(now_ns: int) -> None:
        while pending and pending[0][0] <= now_ns:
            at, _, kind, out, fb, window = heapq.heappop(pending)
            transport.feedback(kind, out, fb.item, fb.position, at, fb.revenue if kind == CONVERSION else None)
            (truth.add_click if kind == CLICK else truth.add_conversion)(out, fb, window)

    for offset, u, p in zip(offsets.tolist(), users.tolist(), placements.tolist(), strict=True):
        start_ns = t0 + int(offset * 1e9)
        if pace:
            delay = offset - (time.perf_counter() - wall0)
            if delay > 0:
                time.sleep(delay)
        emit_due(start_ns)
        uid, placement = user_id(u), PLACEMENTS[p]
        headers: dict[str, str] = {}
        inject(uid, headers)
        out = transport.recommend(uid, placement, headers, start_ns)
        window = None
        if drift_ns is not None and placement == faults.drift:
            window = "after" if start_ns >= drift_ns else "before"
        truth.add_request(out, window)
        for fb in shopper.react(world, user_index(uid), out.items, behaviour_rng):
            click_at = out.end_ns + int(fb.click_delay_s * 1e9)
            seq += 1
            heapq.heappush(pending, (click_at, seq, CLICK, out, fb, window))
            if fb.converted:
                seq += 1
                heapq.heappush(pending, (click_at + int(fb.conversion_delay_s * 1e9), seq, CONVERSION, out, fb,
                                         window))
    emit_due(2**63)
    if own_provider:
        provider.force_flush()
        provider.shutdown()
    else:
        provider.force_flush()
    transport.close()
    wall = time.perf_counter() - wall0  # includes exporting every span
    truth.run = {"paced": pace, "wall_seconds": round(wall, 3),
                 "achieved_rps": round(truth.requests / wall, 1) if wall > 0 else None,
                 "transport": "http" if service_url else "in-process", "exported": not dry_run,
                 "arrivals": arrivals}
    if ground_truth:
        truth.write(ground_truth)
    return truth
