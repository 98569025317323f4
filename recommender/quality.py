"""The service's own /metrics: the offline quality of every model version it loads, and how old it is.

Why here and not a file: the dashboards' model-quality panels must describe what is serving, in every run.
An evaluation file written by an offline job describes the models that job trained, and nobody scrapes it
unless a textfile collector is set up for it. So the service publishes, whenever it loads a model, that
version's offline evaluation (the held-out metrics of its training recipe, `evaluate.offline_summary`) as
`reco_model_*{model_version,k}` gauges, plus when the serving weights were trained and when they were
loaded (`reco_model_trained_timestamp_seconds`, `reco_model_loaded_timestamp_seconds`: staleness is
`time() - trained`). Same names and labels as `python -m recommender evaluate --prom`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from recommender.evaluate import QUALITY_GAUGES, offline_summary

TRAINED = "reco_model_trained_timestamp_seconds"
LOADED = "reco_model_loaded_timestamp_seconds"


@lru_cache(maxsize=4)
def offline_evaluation(seed: int, k: int = 10) -> dict:
    """`offline_summary` of the seed's model versions (cached: it trains each recipe again on a split, which
    takes seconds). Callers must not mutate the result."""
    from recommender.data import generate

    return offline_summary(generate(seed), seed=seed, k=k)


class ModelQualityMetrics:
    """Gauges in a registry of their own; `loaded` publishes one model version, `serve` exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._quality = {key: Gauge(name, help_text, ["model_version", "k"], registry=self.registry)
                         for key, (name, help_text) in QUALITY_GAUGES.items()}
        self._trained = Gauge(TRAINED, "When the serving weights of a model version were trained (unix seconds)",
                              ["model_version"], registry=self.registry)
        self._loaded = Gauge(LOADED, "When the service loaded a model version (unix seconds)", ["model_version"],
                             registry=self.registry)
        self._server: WSGIServer | None = None

    def loaded(self, version: str, trained_at: float, evaluation: Mapping | None = None,
               now: float | None = None) -> None:
        """A model version is serving: publish its timestamps and, when `evaluation` (an `offline_summary`)
        covers it, its offline quality."""
        self._trained.labels(version).set(trained_at)
        self._loaded.labels(version).set(time.time() if now is None else now)
        metrics = (evaluation or {}).get("models", {}).get(version)
        if metrics is None:
            return
        k = evaluation["k"]  # type: ignore[index]
        for key, gauge in self._quality.items():
            gauge.labels(version, str(k)).set(metrics[key.format(k=k)])

    def serve(self, endpoint: str) -> int:
        """Serve /metrics on `HOST:PORT` (port 0: any free one); returns the port."""
        host, _, port = endpoint.rpartition(":")
        self._server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                                  registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
