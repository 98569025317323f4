"""An instrumented collaborative-filtering recommender and its traffic simulator: the workload recohop
is demonstrated, tested and benchmarked with (telemetry contract in ARCHITECTURE.md)."""
