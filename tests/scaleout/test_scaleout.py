"""Scale-out proof: 3 recohop processes behind a trace-id router (what otelcol's loadbalancing exporter does)
keep exactly the traces one instance keeps, and their merged derived metrics equal the single instance's."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter

import grpc
from otlp_peers import CaptureServer, free_port
from recommender_capture import capture_recommender_traffic

from processor.router import Router
from processor.signals import METHOD_PATHS

HOP_CONFIG = """
exporter:
  endpoint: {downstream}
  retry: {{initial_interval: 50ms}}
pipeline:
  - type: redaction
    rules: {repo}/collector-config/redaction/default.yaml
  - type: spanmetrics
    rules: {repo}/collector-config/derivations/default.yaml
    flush_interval: 1h
  - type: tail_sampling
    policies: {repo}/collector-config/policies/default.yaml
    decision_wait: 2s
    root_grace: 200ms
"""
KEY_ENV = {"RECOHOP_PSEUDONYM_KEY": "scale-out-test-key-0123456789abcdef"}
DERIVED = ("reco_requests_total", "reco_impressions_total", "reco_clicks_total", "reco_conversions_total",
           "traces_span_metrics_calls_total")


def send_all(endpoint: str, requests: list[bytes]) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(METHOD_PATHS["traces"])
        for payload in requests:
            export(payload, timeout=30)


def kept(sink: CaptureServer) -> Counter:
    """Span count per kept trace id."""
    return Counter(span.trace_id for span in sink.spans())


def derived_totals(metrics_urls: list[str]) -> dict[str, float]:
    """Sum of every derived counter sample over the given /metrics endpoints, keyed by sample line labels."""
    totals: dict[str, float] = {}
    for url in metrics_urls:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith(DERIVED):
                series, value = line.rsplit(" ", 1)
                totals[series] = totals.get(series, 0.0) + float(value)
    return totals


def wait_for_decisions(sinks: list[CaptureServer], seconds: float = 4.0) -> None:
    """Decisions come at root_grace/decision_wait; wait until the kept span count stops moving."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        count = sum(len(s.spans()) for s in sinks)
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since > seconds:
            return
        time.sleep(0.2)


def test_three_instances_behind_router_equal_one(start_hop) -> None:
    from otlp_peers import REPO_ROOT

    requests, truth = capture_recommender_traffic(150, 12, seed=11,
                                                  faults="error=0.03,slow=0.03,timeout=0.03")
    single_sink, split_sink = CaptureServer().start(), CaptureServer().start()
    router, hops = None, []
    try:
        single = start_hop(HOP_CONFIG.format(downstream=single_sink.endpoint, repo=REPO_ROOT), env=KEY_ENV,
                           name="single")
        shards = [start_hop(HOP_CONFIG.format(downstream=split_sink.endpoint, repo=REPO_ROOT), env=KEY_ENV,
                            name=f"shard{i}") for i in range(3)]
        hops = [single, *shards]
        router = Router(f"127.0.0.1:{free_port()}", [h.endpoint for h in shards]).start()
        send_all(single.endpoint, requests)
        send_all(f"127.0.0.1:{router.port}", requests)
        wait_for_decisions([single_sink, split_sink])

        single_kept, split_kept = kept(single_sink), kept(split_sink)
        assert single_kept == split_kept  # same traces, each whole, nothing kept twice
        special = {bytes.fromhex(t) for ids in truth["trace_ids"].values() for t in ids}
        assert special and special <= set(single_kept)
        # Every shard got a share of the traffic (the router really split it).
        for shard in shards:
            text = urllib.request.urlopen(shard.metrics_url, timeout=10).read().decode()
            received = [ln for ln in text.splitlines() if ln.startswith('recohop_received_items_total{signal="spans"}')]
            assert received and float(received[0].rsplit(" ", 1)[1]) > 0

        single_metrics = derived_totals([single.metrics_url])
        merged_metrics = derived_totals([h.metrics_url for h in shards])
        assert single_metrics and single_metrics == merged_metrics
        requests_total = sum(v for k, v in single_metrics.items() if k.startswith("reco_requests_total"))
        assert requests_total == truth["requests"]
    finally:
        if router is not None:
            router.stop()
        for hop in hops:  # before the sinks: a stopping hop flushes into them
            hop.terminate()
        single_sink.stop()
        split_sink.stop()
