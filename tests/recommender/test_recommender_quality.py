"""The service's model-quality endpoint: every model version it loads is published with its offline quality
and training time, under the same names and labels as `evaluate --prom`, over HTTP as Prometheus scrapes it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from recommender.data import generate
from recommender.evaluate import QUALITY_GAUGES, offline_summary, prometheus_text
from recommender.model import train_arms
from recommender.quality import LOADED, TRAINED, ModelQualityMetrics
from recommender.service import RecommendationService
from recommender.simulate import _arrivals, run


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exposition(quality: ModelQualityMetrics) -> str:
    return generate_latest(quality.registry).decode()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def small() -> tuple:
    """A small world, its two arms and their offline evaluation (seconds, not the full-size minutes)."""
    world = generate(2, n_users=400, n_items=200)
    return world, train_arms(world.interactions, 2, iterations=4), offline_summary(world, seed=2, iterations=4)


def test_loading_publishes_every_version_with_its_quality_and_age(small: tuple) -> None:
    world, arms, evaluation = small
    quality = ModelQualityMetrics()
    before = time.time()
    RecommendationService(world, arms, TracerProvider().get_tracer("t"), seed=2, quality=quality,
                          evaluation=evaluation)
    port = quality.serve("127.0.0.1:0")
    try:
        got = samples(scrape(port))
    finally:
        quality.close()
    versions = {m.version for m in arms.values()} | {"popularity"}
    assert versions == set(evaluation["models"])
    # The same series, names and values as the offline export (`evaluate --prom`) for what is loaded.
    offline = samples(prometheus_text(evaluation))
    served = {key: value for key, value in got.items() if key[0] in {n for n, _ in QUALITY_GAUGES.values()}}
    assert served.keys() == offline.keys()
    assert served == pytest.approx(offline, rel=1e-5)
    for model in arms.values():
        assert got[(TRAINED, frozenset({("model_version", model.version)}))] == model.trained_at
    loaded = {dict(labels)["model_version"]: v for (name, labels), v in got.items() if name == LOADED}
    assert set(loaded) == versions and all(before <= t <= time.time() for t in loaded.values())


def test_a_version_without_evaluation_still_says_it_is_loaded(small: tuple) -> None:
    world, arms, _ = small
    quality = ModelQualityMetrics()
    RecommendationService(world, arms, TracerProvider().get_tracer("t"), seed=2, quality=quality)
    got = {name for name, _ in samples(exposition(quality))}
    assert {TRAINED, LOADED} <= got and "reco_model_ndcg" not in got


def test_serve_cli_exposes_model_quality() -> None:
    """`python -m recommender serve --metrics-listen` answers /metrics with the loaded versions' quality."""
    proc = subprocess.Popen([sys.executable, "-m", "recommender", "serve", "--port", "0", "--endpoint",
                             "127.0.0.1:1", "--seed", "0", "--metrics-listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on ")
        line = proc.stdout.readline()
        assert line.startswith("metrics on 127.0.0.1:"), line
        got = samples(scrape(int(line.rsplit(":", 1)[1])))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    ndcg = {dict(labels)["model_version"]: v for (name, labels), v in got.items() if name == "reco_model_ndcg"}
    assert set(ndcg) == {"als-f32-v1", "als-f64-v2", "popularity"}
    assert ndcg["als-f32-v1"] > ndcg["popularity"] > 0


def test_even_arrivals_are_constant_offered_load() -> None:
    rng = np.random.default_rng(0)
    even = _arrivals(rng, 80.0, 3.0, "even")
    assert len(even) == 240 and np.allclose(np.diff(even), 1 / 80.0) and even[0] == 0.0
    with pytest.raises(ValueError, match="arrivals"):
        _arrivals(rng, 80.0, 3.0, "bursty")
    truth = run(None, rps=50, duration=2, seed=0, dry_run=True, arrivals="even")
    assert truth.requests == 100 and truth.run["arrivals"] == "even"
