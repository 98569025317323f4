"""The telemetry contract the dashboards and alerts query (mirrors ARCHITECTURE.md; names only, no logic)."""

from __future__ import annotations

SERVICE = "recommendation-service"

# The span tree of one recommendation (seed 000), in display order.
ROOT_STAGE = "reco.generate"
CHILD_STAGES = ("reco.fetch_user_history", "reco.fetch_candidates", "reco.score_candidates", "reco.post_process")
NESTED_STAGES = ("reco.fetch_embeddings", "reco.model_inference")  # children of reco.score_candidates
STAGES = (ROOT_STAGE, *CHILD_STAGES, *NESTED_STAGES)

PLACEMENTS = ("home", "product_page", "cart", "email")
VARIANTS = ("A", "B")
STATUS_ERROR = "STATUS_CODE_ERROR"

# Derived by the hop's span-metrics stage.
REQUESTS = "reco_requests_total"
IMPRESSIONS = "reco_impressions_total"
CLICKS = "reco_clicks_total"
CONVERSIONS = "reco_conversions_total"
REVENUE = "reco_revenue_total"
CACHE_LOOKUPS = "reco_cache_lookups_total"
STAGE_DURATION_BUCKET = "reco_stage_duration_seconds_bucket"
SPAN_CALLS = "traces_span_metrics_calls_total"
SPAN_DURATION_BUCKET = "traces_span_metrics_duration_seconds_bucket"

# Model quality, served by the recommendation service's own /metrics for every model version it loads
# (recommender/quality.py): offline evaluation gauges labelled model_version and k, and timestamps.
MODEL_NDCG = "reco_model_ndcg"
MODEL_COVERAGE = "reco_model_catalog_coverage"
MODEL_DIVERSITY = "reco_model_intra_list_diversity"
MODEL_TRAINED = "reco_model_trained_timestamp_seconds"  # labelled model_version: staleness is time() - this
MODEL_K = "10"  # the cut-off the panels show (NDCG@10)

# Hop self-metrics.
HOP_RECEIVED = "recohop_received_items_total"
HOP_REFUSED = "recohop_refused_items_total"
HOP_EXPORTED = "recohop_exported_items_total"
HOP_EXPORT_FAILED = "recohop_export_failed_items_total"
HOP_EXPORT_RETRIES = "recohop_export_retries_total"
HOP_QUEUE_BYTES = "recohop_queue_bytes"
HOP_QUEUE_CAPACITY = "recohop_queue_capacity_bytes"
HOP_STAGE_SECONDS = "recohop_stage_seconds_total"
HOP_BUFFER_TRACES = "recohop_sampling_buffer_traces"
HOP_BUFFER_BYTES = "recohop_sampling_buffer_bytes"
HOP_DECISIONS = "recohop_sampling_decisions_total"
HOP_DECIDED_EARLY = "recohop_sampling_decided_early_total"
HOP_LATE_SPANS = "recohop_sampling_late_spans_total"
HOP_DECISION_LATENCY_BUCKET = "recohop_sampling_decision_latency_seconds_bucket"
HOP_SAMPLING_LOGS = "recohop_sampling_logs_total"
HOP_REDACTION_RULE_HITS = "recohop_redaction_rule_hits_total"
HOP_REDACTION_DETECTOR_HITS = "recohop_redaction_detector_hits_total"
HOP_REDACTION_SPANS = "recohop_redaction_spans_touched_total"
HOP_ACTIVE_SERIES = "recohop_cardinality_active_series"
HOP_FOLDED = "recohop_cardinality_folded_total"
