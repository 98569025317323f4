"""The recommendation service behind HTTP, so trace context and A/B baggage cross a real process boundary.

`python -m recommender serve --port P --endpoint HOST:PORT --seed K` answers
`POST /recommend` (JSON `{user_id, placement, start_ns}`, W3C `traceparent`/`baggage` headers) with a
`RecoOutcome` as JSON, and `POST /feedback` (`{kind, outcome, item, position, at_ns, revenue}`).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from recommender.faults import Faults
from recommender.service import RecommendationService, RecoOutcome
from recommender.telemetry import SCOPE, make_provider

_HEADERS = ("traceparent", "tracestate", "baggage")


def make_server(service: RecommendationService, port: int = 0) -> ThreadingHTTPServer:
    lock = threading.Lock()  # the service's seeded RNG and clock are single-threaded by design

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                carrier = {h: v for h in _HEADERS if (v := self.headers.get(h)) is not None}
                with lock:
                    if self.path == "/recommend":
                        out = service.recommend(body["user_id"], body["placement"], carrier,
                                                int(body.get("start_ns") or time.time_ns()))
                        reply = out.to_json()
                    elif self.path == "/feedback":
                        out = RecoOutcome.from_json(body["outcome"])
                        trace_id = service.record_feedback(body["kind"], out, int(body["item"]),
                                                           int(body["position"]), int(body["at_ns"]),
                                                           body.get("revenue"))
                        reply = {"trace_id": trace_id}
                    else:
                        self.send_error(404)
                        return
                data = json.dumps(reply).encode()
                self.send_response(200)
            except (KeyError, ValueError) as exc:
                data = json.dumps({"error": type(exc).__name__}).encode()
                self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # request lines carry user ids: never log them

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


class HttpClient:
    """The frontend's side: one keep-alive connection, headers as injected by `experiment.inject`."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)

    def _post(self, path: str, body: dict, headers: dict[str, str] | None = None) -> dict:
        data = json.dumps(body).encode()
        self._conn.request("POST", path, body=data,
                           headers={"Content-Type": "application/json", **(headers or {})})
        resp = self._conn.getresponse()
        payload = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status} {payload}")
        return payload

    def recommend(self, uid: str, placement: str, headers: dict[str, str], start_ns: int) -> RecoOutcome:
        return RecoOutcome.from_json(self._post("/recommend", {"user_id": uid, "placement": placement,
                                                               "start_ns": start_ns}, headers))

    def feedback(self, kind: str, out: RecoOutcome, item: int, position: int, at_ns: int,
                 revenue: float | None) -> None:
        self._post("/feedback", {"kind": kind, "outcome": out.to_json(), "item": item, "position": position,
                                 "at_ns": at_ns, "revenue": revenue})

    def close(self) -> None:
        self._conn.close()


def serve(endpoint: str, port: int, seed: int, faults: Faults, drift_after_s: float | None = None,
          metrics_listen: str | None = None) -> int:
    """Run until interrupted; prints `listening on 127.0.0.1:PORT` once ready, then `metrics on HOST:PORT`
    when `metrics_listen` serves the loaded models' quality (offline evaluation, training time)."""
    from recommender.quality import ModelQualityMetrics, offline_evaluation
    from recommender.trained import world_and_arms

    world, arms = world_and_arms(seed)
    provider = make_provider(endpoint=endpoint, seed=seed + 1)
    quality = ModelQualityMetrics() if metrics_listen else None
    evaluation = offline_evaluation(seed) if quality is not None else None
    service = RecommendationService(world, arms, provider.get_tracer(SCOPE, "0.1.0"), faults, seed, quality,
                                    evaluation)
    if faults.drift:
        service.drift_from_ns = time.time_ns() + int((drift_after_s or 0.0) * 1e9)
    server = make_server(service, port)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    if quality is not None and metrics_listen:
        host = metrics_listen.rpartition(":")[0] or "127.0.0.1"
        print(f"metrics on {host}:{quality.serve(metrics_listen)}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if quality is not None:
            quality.close()
        provider.force_flush()
        provider.shutdown()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: leave serve_forever through the same path as Ctrl-C, then flush
