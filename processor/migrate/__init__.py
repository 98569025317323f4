"""Migration from the OpenTelemetry Collector: `recohop policy import OTELCOL_CONFIG --out DIR` turns a
collector config's tail_sampling processor, redaction processor and spanmetrics connector into recohop's policy,
redaction and derivation files (plus a hop config that wires them), with otelcol v0.158's semantics.

One module per job: `source` reads the collector config (paths, pipelines, Go values), `tail_sampling` (and
`ottl` for its conditions), `redaction` and `spanmetrics` translate one component each, `importer` renders,
validates with recohop's own loaders and writes. What has no equivalent is refused with the component, the key
path and why; what is translated with a known difference becomes a note; nothing is dropped without a word.
"""
