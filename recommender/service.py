"""The recommendation service, instrumented per ARCHITECTURE.md's recommender telemetry contract.

Stage latencies are simulated and stamped as explicit span start/end times (nothing sleeps), so a run is
fast and, under a seed, reproducible. The real work (history lookup, brute-force candidates, scoring,
diversity post-processing) is done for every request.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field

import numpy as np
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer

from recommender.data import CATEGORIES, World
from recommender.experiment import assign_variant, extract, variant_of
from recommender.faults import Faults
from recommender.model import FactorModel, PopularityModel, top_n
from recommender.quality import ModelQualityMetrics

GENERATE = "reco.generate"
HISTORY = "reco.fetch_user_history"
CANDIDATES = "reco.fetch_candidates"
SCORE = "reco.score_candidates"
EMBEDDINGS = "reco.fetch_embeddings"
INFERENCE = "reco.model_inference"
POST = "reco.post_process"
CLICK = "reco.click"
CONVERSION = "reco.conversion"
STAGES = (GENERATE, HISTORY, CANDIDATES, SCORE, EMBEDDINGS, INFERENCE, POST)

RESULTS_PER_PLACEMENT = {"home": 12, "product_page": 8, "cart": 4, "email": 6}
NUM_CANDIDATES = 100
MIN_HISTORY = 3  # fewer interactions than this is a cold start → popularity strategy
MAX_PER_CATEGORY = 3
MODEL_STORE_TIMEOUT_MS = 250.0
_MS = 1_000_000


class StageError(RuntimeError):
    """A simulated dependency failure inside one stage."""


_ERRORS = {  # stage → (exception message) when the error fault hits it
    HISTORY: "user history store: connection reset by peer",
    CANDIDATES: "candidate index shard unavailable",
    EMBEDDINGS: "embedding store returned 503",
    INFERENCE: "model server: CUDA out of memory",
    POST: "catalog filter: inventory service 500",
}
_QUERIES = ("wireless headphones", "running shoes", "coffee grinder", "lego set", "garden hose",
            "face cream", "novel", "yoga mat", "desk lamp", "vinyl record")


def user_id(index: int) -> str:
    return f"u{index}"


def user_index(uid: str) -> int:
    return int(uid[1:])


def user_email(index: int) -> str:
    return f"shopper{index}@example.com"


def client_address(index: int) -> str:
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


@dataclass
class RecoOutcome:
    """What a recommendation did; the simulator's ground truth and the HTTP response body."""

    request_id: str
    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    user_id: str
    placement: str
    variant: str
    model_version: str
    strategy: str
    cold_start: bool
    fallback: bool
    error: bool
    cache_hit: bool | None
    num_candidates: int
    items: list[int]
    start_ns: int
    end_ns: int
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / _MS

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RecoOutcome:
        return cls(**data)


class RecommendationService:
    """Serves recommendations for the two A/B arms, with fallback, faults and full tracing."""

    def __init__(self, world: World, arms: dict[str, FactorModel], tracer: Tracer, faults: Faults | None = None,
                 seed: int = 0, quality: ModelQualityMetrics | None = None,
                 evaluation: Mapping | None = None) -> None:
        """`quality`: where the loaded model versions are published, with their offline `evaluation` (an
        `evaluate.offline_summary`) when given."""
        self.world = world
        self.arms = arms
        self.popularity = PopularityModel.fit(world.interactions)
        self._pop_order = top_n(self.popularity.counts.astype(np.float64), world.catalog.n_items)
        self.history = world.interactions.history()
        self.tracer = tracer
        self.faults = faults or Faults()
        self.rng = random.Random(f"service:{seed}")
        perm = np.random.default_rng(seed + 7919).permutation(world.catalog.n_items)
        # Silent drift: an embedding table that no longer lines up with item ids (a broken refresh job).
        self._stale = {v: FactorModel(m.version, m.user_factors, m.item_factors[perm], m.trained_at)
                       for v, m in arms.items()}
        self.drift_from_ns: int | None = None  # set by whoever runs the drift scenario
        self._request_seq = 0
        if quality is not None:  # the models are loaded: say which, how good offline, and how old
            for model in (*arms.values(), self.popularity):
                quality.loaded(model.version, model.trained_at, evaluation)

    # -- one recommendation ------------------------------------------------------------------------------

    def recommend(self, uid: str, placement: str, headers: MutableMapping[str, str], start_ns: int,
                  request_id: str | None = None) -> RecoOutcome:
        """Handle one request whose W3C headers (`traceparent`, `baggage`) arrived in `headers`."""
        rng, faults, tracer = self.rng, self.faults, self.tracer
        u = user_index(uid)
        parent = extract(headers)
        variant = variant_of(parent) or assign_variant(uid)
        model = self.arms[variant]
        if request_id is None:
            self._request_seq += 1
            request_id = f"req-{self._request_seq:08d}"
        history = self.history[u] if u < len(self.history) else np.zeros(0, dtype=np.int32)
        cold = len(history) < MIN_HISTORY
        failing = rng.choice(tuple(_ERRORS)) if rng.random() < faults.error else None
        root = tracer.start_span(GENERATE, context=parent, kind=SpanKind.SERVER, start_time=start_ns, attributes={
            "reco.request_id": request_id, "reco.placement": placement, "reco.model_version": model.version,
            "experiment.variant": variant, "reco.cold_start": cold,
            "user.id": uid, "user.email": user_email(u), "client.address": client_address(u),
            "reco.search_query": self._query(u),
        })
        ctx = trace.set_span_in_context(root, parent)
        stage_ms: dict[str, float] = {}
        out = RecoOutcome(request_id, f"{root.get_span_context().trace_id:032x}",
                          f"{root.get_span_context().span_id:016x}", uid, placement, variant, model.version,
                          "popularity" if cold else "cf", cold, False, False, None, 0, [], start_ns, start_ns,
                          stage_ms)
        now = [start_ns + self._ms(0.3, 0.3)]  # the simulated clock, advanced by each finished stage

        # Every stage span repeats the slicing dimensions, so span metrics (reco_stage_duration_seconds,
        # reco_cache_lookups_total) can label a stage without joining it to its root span.
        dims = {"reco.placement": placement, "reco.model_version": model.version, "experiment.variant": variant}

        def stage(name: str, dur_ns: int, attrs: dict, context=ctx) -> None:
            """Emit one finished child span; on the injected failure, record it and raise."""
            span = tracer.start_span(name, context=context, start_time=now[0], attributes={**dims, **attrs})
            end = now[0] = now[0] + dur_ns
            stage_ms[name] = dur_ns / _MS
            if failing == name:
                exc = StageError(_ERRORS[name])
                span.record_exception(exc, timestamp=end)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.end(end_time=end)
                raise exc
            span.end(end_time=end)

        try:
            stage(HISTORY, self._ms(6.0, 0.35), {"reco.history_items": len(history)})
            scorer = self.popularity if cold else self._scorer(variant, placement, start_ns)
            if cold:
                head = self._pop_order[:NUM_CANDIDATES + len(history)]
                candidates = head[~np.isin(head, history)][:NUM_CANDIDATES]
            else:
                candidates = scorer.recommend(u, NUM_CANDIDATES, history)
            out.num_candidates = len(candidates)
            stage(CANDIDATES, self._ms(3.0 if cold else 12.0, 0.4),
                      {"reco.candidate_source": out.strategy, "reco.num_candidates": len(candidates)})

            score_start = now[0]
            score_span = tracer.start_span(SCORE, context=ctx, start_time=score_start, attributes=dims)
            try:
                scores = self._score(stage, trace.set_span_in_context(score_span, ctx), u, candidates, scorer, out)
            finally:
                now[0] += self._ms(0.2, 0.3)
                stage_ms[SCORE] = (now[0] - score_start) / _MS
                if failing in (EMBEDDINGS, INFERENCE):
                    score_span.set_status(Status(StatusCode.ERROR, _ERRORS[failing]))
                score_span.end(end_time=now[0])

            final = self._post_process(candidates, scores, RESULTS_PER_PLACEMENT[placement])
            out.items = final.tolist()
            stage(POST, self._ms(2.0, 0.3), {"reco.filtered_out": len(candidates) - len(final)})
        except StageError as exc:
            out.error = True
            out.items = []
            root.record_exception(exc, timestamp=now[0])
            root.set_status(Status(StatusCode.ERROR, str(exc)))
        out.end_ns = now[0] + self._ms(0.4, 0.3)
        stage_ms[GENERATE] = (out.end_ns - start_ns) / _MS
        root.set_attributes({"reco.strategy": out.strategy, "reco.fallback": out.fallback,
                             "reco.num_candidates": out.num_candidates, "reco.num_results": len(out.items)})
        root.end(end_time=out.end_ns)
        return out

    def _score(self, stage: Callable[..., None], ctx: Context, u: int, candidates: np.ndarray,
               scorer: FactorModel | PopularityModel, out: RecoOutcome) -> np.ndarray:
        """fetch_embeddings then model_inference; a model-store timeout degrades to popularity."""
        rng, faults = self.rng, self.faults
        hit = rng.random() >= faults.cache_miss
        out.cache_hit = hit
        attrs: dict = {"reco.cache_hit": hit, "reco.num_embeddings": len(candidates)}
        if out.strategy == "cf" and rng.random() < faults.timeout:
            dur = int(MODEL_STORE_TIMEOUT_MS * _MS)
            out.fallback, out.strategy = True, "popularity"
            scorer = self.popularity
            attrs["reco.timeout"] = True
        elif rng.random() < faults.slow:
            dur = int(rng.uniform(550.0, 1500.0) * _MS)
        else:
            dur = self._ms(4.0 if hit else 28.0, 0.45)
        stage(EMBEDDINGS, dur, attrs, ctx)
        scores = np.asarray(scorer.scores(u, candidates), dtype=np.float64)
        base = 6.0 if out.strategy == "popularity" else 4.0 + out.num_candidates * self.arms[out.variant].factors / 800
        stage(INFERENCE, self._ms(base, 0.3), {"reco.strategy": out.strategy}, ctx)
        return scores

    def _scorer(self, variant: str, placement: str, start_ns: int) -> FactorModel:
        f = self.faults
        if (f.drift == placement and self.drift_from_ns is not None and start_ns >= self.drift_from_ns
                and self.rng.random() < f.drift_severity):
            return self._stale[variant]
        return self.arms[variant]

    def _post_process(self, candidates: np.ndarray, scores: np.ndarray, limit: int) -> np.ndarray:
        """Best-first, at most MAX_PER_CATEGORY per category, then `limit` items."""
        order = candidates[np.argsort(-scores, kind="stable")]
        cats = self.world.catalog.categories[order]
        seen = np.zeros(len(CATEGORIES), dtype=int)
        keep: list[int] = []
        for item, cat in zip(order.tolist(), cats.tolist(), strict=True):
            if seen[cat] < MAX_PER_CATEGORY:
                seen[cat] += 1
                keep.append(item)
                if len(keep) == limit:
                    break
        return np.asarray(keep, dtype=np.int64)

    def _ms(self, median_ms: float, sigma: float) -> int:
        return int(median_ms * self.rng.lognormvariate(0.0, sigma) * _MS)

    def _query(self, u: int) -> str:
        """Free text as users type it; sometimes with an email or phone number in it (redaction work)."""
        r = self.rng.random()
        q = _QUERIES[self.rng.randrange(len(_QUERIES))]
        if r < 0.03:
            return f"order status {user_email(u)}"
        if r < 0.05:
            return f"{q} call me +1 555 01{u % 100:02d} 77{u % 10}"
        return q

    # -- user feedback: separate traces linked to the recommendation -------------------------------------

    def record_feedback(self, kind: str, out: RecoOutcome, item: int, position: int, at_ns: int,
                        revenue: float | None = None) -> str:
        """Emit `reco.click` or `reco.conversion` as a new trace linked to the `reco.generate` span."""
        link = Link(trace.SpanContext(int(out.trace_id, 16), int(out.span_id, 16), is_remote=True,
                                      trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)))
        attrs: dict = {"reco.request_id": out.request_id, "reco.item_id": f"i{item}", "reco.position": position,
                       "reco.placement": out.placement, "reco.model_version": out.model_version,
                       "experiment.variant": out.variant, "user.id": out.user_id}
        if kind == CONVERSION:
            attrs["reco.revenue"] = float(revenue or 0.0)
        elif kind != CLICK:
            raise ValueError(f"unknown feedback kind {kind!r}")
        span = self.tracer.start_span(kind, context=trace.set_span_in_context(trace.INVALID_SPAN),
                                      kind=SpanKind.SERVER, links=[link], start_time=at_ns, attributes=attrs)
        span.end(end_time=at_ns + self._ms(1.5, 0.3))
        return f"{span.get_span_context().trace_id:032x}"
