"""A/B assignment by hash, carried as W3C baggage from a frontend (this test) to the service in another
process over HTTP; the service's spans arrive over real OTLP gRPC at the `downstream` capture server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

from opentelemetry.sdk.trace import TracerProvider

from recommender.experiment import BAGGAGE_KEY, assign_variant, extract, inject, variant_of
from recommender.http_service import HttpClient
from recommender.model import ARMS


def test_assignment_is_stable_per_user_and_roughly_balanced() -> None:
    users = [f"u{i}" for i in range(4000)]
    first = [assign_variant(u) for u in users]
    assert first == [assign_variant(u) for u in users]
    counts = Counter(first)
    assert set(counts) == {"A", "B"} and abs(counts["A"] - counts["B"]) < 0.06 * len(users)
    assert [assign_variant(u, experiment="other") for u in users] != first  # salted per experiment


def test_inject_extract_round_trip_in_headers() -> None:
    headers: dict[str, str] = {}
    variant = inject("u42", headers)
    assert headers["baggage"] == f"{BAGGAGE_KEY}={variant}"
    assert variant_of(extract(headers)) == variant
    assert variant_of(extract({"baggage": f"{BAGGAGE_KEY}=Z"})) is None


def _start_service(endpoint: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "recommender", "serve", "--port", "0", "--endpoint", endpoint,
                             "--seed", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("listening on "), line
    return proc, "http://" + line.split()[-1]


def test_baggage_crosses_a_process_boundary_and_picks_the_model(downstream) -> None:
    proc, url = _start_service(downstream.endpoint)
    frontend = TracerProvider().get_tracer("frontend")
    sent: dict[str, tuple[str, int, int]] = {}  # request_id → (variant in baggage, trace id, parent span id)
    try:
        client = HttpClient(url)
        for i in range(40):
            uid = f"u{i * 7}"
            with frontend.start_as_current_span("frontend.page") as page:
                headers: dict[str, str] = {}
                variant = inject(uid, headers)
                if i % 5 == 0:  # an override the service cannot derive from the user id: baggage must win
                    variant = "B" if variant == "A" else "A"
                    headers["baggage"] = f"{BAGGAGE_KEY}={variant}"
                out = client.recommend(uid, "home", headers, time.time_ns())
                sent[out.request_id] = (variant, page.get_span_context().trace_id, page.get_span_context().span_id)
                assert out.variant == variant and out.model_version == ARMS[variant][0]
        client.close()
    finally:
        proc.terminate()  # SIGTERM: the service flushes its BatchSpanProcessor before exiting
        assert proc.wait(timeout=30) == 0
    roots = [s for s in downstream.spans() if s.name == "reco.generate"]
    assert len(roots) == len(sent)
    for span in roots:
        attrs = {kv.key: kv.value for kv in span.attributes}
        variant, trace_id, parent = sent[attrs["reco.request_id"].string_value]
        assert attrs["experiment.variant"].string_value == variant
        assert attrs["reco.model_version"].string_value == ARMS[variant][0]
        assert span.trace_id == trace_id.to_bytes(16, "big") and span.parent_span_id == parent.to_bytes(8, "big")
