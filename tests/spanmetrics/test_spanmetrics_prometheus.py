"""End to end with real processes: OTel SDK -> recohop (spanmetrics before tail sampling at ~1 %) ->
downstream, with a real Prometheus scraping the hop's /metrics. PromQL returns exactly the counts of all
spans sent, although only a few traces were kept, and every exemplar points at a kept trace."""

from __future__ import annotations

import bisect
import time

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from otlp_peers import wait_until_drained
from spanmetrics_helpers import DEFAULT_RULES, Truth

from bench.spanmetrics_workload import CHILDREN, SERVICE, Reco, make_recos
from processor.localprom import prometheus_binary, start_prometheus

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(prometheus_binary() is None, reason="Debian prometheus not installed")]

MS = 1_000_000
STAGE_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


def send(endpoint: str, recos: list[Reco]) -> None:
    """The recommender's span shapes, emitted with the OpenTelemetry SDK over OTLP gRPC."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                                   max_export_batch_size=512, schedule_delay_millis=200))
    tracer = provider.get_tracer("recommender")
    t0 = time.time_ns() - 60_000 * MS
    for i, r in enumerate(recos):
        start = t0 + i * 10 * MS
        root = tracer.start_span("reco.generate", context=otel_context.Context(), kind=SpanKind.SERVER,
                                 start_time=start, attributes={
                                     "reco.placement": r.placement, "reco.model_version": r.model_version,
                                     "experiment.variant": r.variant, "reco.cold_start": r.cold_start,
                                     "reco.strategy": "popularity" if r.cold_start else "cf",
                                     "reco.fallback": False, "reco.num_results": r.num_results,
                                     "user.id": f"user-{i}", "user.email": f"user-{i}@example.com"})
        ctx = trace.set_span_in_context(root)
        for name in CHILDREN:
            attrs = {"reco.cache_hit": r.cache_hit, "reco.placement": r.placement} \
                if name == "reco.fetch_embeddings" else {}
            tracer.start_span(name, context=ctx, start_time=start, attributes=attrs).end(end_time=start + 2 * MS)
        if r.error:
            root.record_exception(RuntimeError("embedding store down"))
            root.set_status(Status(StatusCode.ERROR, "embedding store down"))
        root.end(end_time=start + int(r.root_ms * MS))
        link = [Link(root.get_span_context())]
        feedback = [("reco.click", p, None) for p in r.clicks] + [("reco.conversion", 1, v) for v in r.revenue]
        for name, position, revenue in feedback:
            attrs = {"reco.position": position, "reco.placement": r.placement,
                     "reco.model_version": r.model_version, "experiment.variant": r.variant,
                     "reco.item_id": f"i{i}", "user.id": f"user-{i}"}
            if revenue is not None:
                attrs["reco.revenue"] = revenue
            tracer.start_span(name, context=otel_context.Context(), kind=SpanKind.SERVER, links=link,
                              start_time=start, attributes=attrs).end(end_time=start + MS)
    provider.force_flush()
    provider.shutdown()


def test_promql_counts_exact_with_tail_sampling(downstream, start_hop, tmp_path) -> None:
    recos = make_recos(300, seed=99)
    truth = Truth.of(recos)
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  - {name: errors, type: status_code}\n"
                        "  - {name: rest, type: probabilistic, percentage: 1}\n")
    hop = start_hop(f"""
exporter:
  endpoint: {downstream.endpoint}
pipeline:
  - type: spanmetrics
    rules: {DEFAULT_RULES}
    flush_interval: 1s
  - type: tail_sampling
    policies: {policies}
    decision_wait: 1s
    root_grace: 0.2s
""")
    prom = start_prometheus([hop.metrics_url], tmp_path)
    try:
        send(hop.endpoint, recos)
        total_spans = sum(7 + len(r.clicks) + len(r.revenue) for r in recos)

        def equals(expected: float):
            return lambda result: bool(result) and float(result[0]["value"][1]) == expected

        calls = prom.wait_for("sum(traces_span_metrics_calls_total)", equals(total_spans))
        assert float(calls[0]["value"][1]) == total_spans, prom.log()
        errors = sum(1 for r in recos if r.error)
        assert prom.scalar('sum(traces_span_metrics_calls_total{span_name="reco.generate",'
                           'status_code="STATUS_CODE_ERROR"})') == errors
        assert prom.scalar("sum(reco_requests_total)") == len(recos)
        assert prom.scalar('sum(reco_requests_total{cold_start="true"})') == \
            sum(1 for r in recos if r.cold_start)
        by_placement = {res["metric"]["placement"]: float(res["value"][1])
                        for res in prom.query("sum by (placement) (reco_clicks_total)")}
        expected_clicks: dict[str, float] = {}
        for (placement, _), n in truth.clicks.items():
            expected_clicks[placement] = expected_clicks.get(placement, 0) + n
        assert by_placement == expected_clicks
        assert prom.scalar("sum(reco_impressions_total)") == sum(r.num_results for r in recos)
        # quantiles land in the bucket that holds rank q*N of the true durations (Prometheus' definition)
        durations = sorted(r.root_ms / 1000 for r in recos)
        for quantile in (0.5, 0.95):
            rank = quantile * len(durations)
            i = next(i for i, b in enumerate(STAGE_BOUNDS) if bisect.bisect_right(durations, b) >= rank)
            low = STAGE_BOUNDS[i - 1] if i else 0.0
            q = prom.scalar(f'histogram_quantile({quantile}, sum by (le) '
                            '(reco_stage_duration_seconds_bucket{stage="reco.generate"}))')
            assert q is not None and low <= q <= STAGE_BOUNDS[i], (quantile, q, low, STAGE_BOUNDS[i])
        assert prom.scalar("histogram_quantile(0.95, sum by (le) (reco_stage_duration_seconds_bucket"
                           '{stage="reco.generate"}))') > 0.5  # the p95 > 500 ms alert condition holds

        # only a few traces went on; the metrics above still counted every span
        wait_until_drained(hop, downstream)
        kept = {s.trace_id for s in downstream.spans()}
        generate_kept = {s.trace_id for s in downstream.spans() if s.name == "reco.generate"}
        assert errors <= len(generate_kept) < len(recos) // 4
        exemplars = prom.wait_for_exemplars("traces_span_metrics_duration_seconds_bucket")
        ids = {bytes.fromhex(e["labels"]["trace_id"]) for series in exemplars for e in series["exemplars"]}
        assert ids, "expected exemplars of kept (error) traces"
        assert ids <= kept
        # derived metrics also went downstream as OTLP
        names = {m.name for req in downstream.requests("metrics") for rm in req.resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}
        assert {"reco_clicks", "traces_span_metrics_calls"} <= names
    finally:
        prom.stop()
