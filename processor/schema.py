"""Every hop setting once: its key, kind, default and meaning. The one source of truth for defaults.

The config dataclasses (`processor/config.py`) and the stages take their defaults from here; README's
configuration table is generated from it (`recohop config reference`); tests check that the built-in default
config, the annotated example and the render parameters agree with it, so none of them can drift.
Defaults are written as in a config file ("10s", "64MiB"); `value(key)` gives the parsed value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processor.config_node import Node


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # endpoint | size | duration | int | bool | choice | str | path | list | section
    default: Any  # config-file notation; None: absent (off)
    doc: str
    choices: tuple[str, ...] = ()
    shown: str = ""  # how the default reads in the README table, when `default` alone would mislead


# The built-in default pipeline, in order.
DEFAULT_PIPELINE = ("limits", "redaction", "spanmetrics", "tail_sampling", "cardinality")

SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("receiver.endpoint", "endpoint", "127.0.0.1:4317",
            "OTLP gRPC listen address (traces, metrics, logs, `grpc.health.v1`)"),
    Setting("receiver.max_recv_msg_size", "size", "4MiB",
            "larger requests get RESOURCE_EXHAUSTED (gRPC) or 413 (HTTP), as otelcol"),
    Setting("receiver.workers", "int", 16, "gRPC worker threads"),
    Setting("receiver.max_pending_requests", "int", 8,
            "requests admitted at once (parsing or waiting for the pipeline); more get RESOURCE_EXHAUSTED + "
            "RetryInfo at once, so a CPU-bound hop pushes back"),
    Setting("receiver.drain_window", "duration", "0s",
            "on SIGTERM: health NOT_SERVING at once, still accepting this long (`5s` in the production template)"),
    Setting("receiver.http.endpoint", "endpoint", "127.0.0.1:4318",
            "OTLP/HTTP `POST /v1/traces`, `/v1/metrics`, `/v1/logs`: protobuf or OTLP/JSON, gzip; same pipeline, "
            "admission, size limit, TLS and token as gRPC; 400 / 413 / 415, 429 (overloaded) / 503 (queue full) "
            "with Retry-After", shown="off (`127.0.0.1:4318` in the zero-config default)"),
    Setting("receiver.http.cors.allowed_origins", "list", [], "browser origins allowed (exact or `https://*.x`)",
            shown="none"),
    Setting("receiver.http.cors.max_age", "duration", "2h", "how long a browser may cache the preflight answer"),
    Setting("receiver.tls", "section", None,
            "`cert_file`, `key_file`, `ca_file`, `client_auth: true` for mutual TLS (gRPC and HTTP)", shown="off"),
    Setting("receiver.auth", "section", None,
            "`bearer_token_env` or `bearer_token_file`: require `authorization: Bearer <token>` "
            "(constant-time check)", shown="off"),
    Setting("exporter.endpoint", "endpoint", None, "next hop `host:port` (OTLP gRPC)", shown="none → file sink"),
    Setting("exporter.compression", "choice", "none", "compression of the export calls", choices=("none", "gzip")),
    Setting("exporter.timeout", "duration", "10s", "per export call"),
    Setting("exporter.insecure", "bool", True, "plain gRPC to the next hop; `false` + `tls.ca_file` for TLS"),
    Setting("exporter.tls", "section", None, "`ca_file`, `cert_file`, `key_file` for TLS to the next hop",
            shown="off"),
    Setting("exporter.bearer_token_env", "str", None, "send `authorization: Bearer $VAR` to the next hop",
            shown="none"),
    Setting("exporter.file.path", "path", "recohop-out/export.jsonl",
            "file sink: OTLP/JSON lines (hex ids; at most 1 MiB a line, as otelcol's otlpjsonfile receiver "
            "reads), mode 0600"),
    Setting("exporter.file.max_bytes", "size", "64MiB", "file sink: rotate at this size"),
    Setting("exporter.file.backups", "int", 3, "file sink: rotated files kept"),
    Setting("exporter.queue.max_bytes", "size", "64MiB",
            "export queue budget in bytes; when full the receiver answers RESOURCE_EXHAUSTED with RetryInfo"),
    Setting("exporter.queue.consumers", "int", 2, "concurrent export calls"),
    Setting("exporter.queue.send_batch_max_bytes", "size", "2MiB",
            "queued requests are joined into calls up to this size (keep it under the next hop's limit)"),
    Setting("exporter.spill.dir", "path", None,
            "disk queue behind the memory queue (0600 segments): a long outage costs disk, not data; delivered "
            "first and in order after a restart", shown="off"),
    Setting("exporter.spill.max_bytes", "size", "1GiB", "disk queue budget"),
    Setting("exporter.spill.fsync", "choice", "interval", "`always`, `interval` (~1 s) or `never`",
            choices=("always", "interval", "never")),
    Setting("exporter.retry.initial_interval", "duration", "500ms",
            "exponential backoff with jitter on UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED; the "
            "server's RetryInfo wins; no retry on INVALID_ARGUMENT"),
    Setting("exporter.retry.max_interval", "duration", "30s", "longest wait between attempts"),
    Setting("exporter.retry.max_elapsed_time", "duration", "5m",
            "then the data is dropped and counted (`recohop_export_failed_items_total`)"),
    Setting("telemetry.metrics_endpoint", "endpoint", "127.0.0.1:9464",
            "Prometheus `/metrics` (hop health + derived metrics); `off` to disable"),
    Setting("telemetry.log_level", "choice", "info", "the hop never logs attribute values",
            choices=("debug", "info", "warning", "error")),
    Setting("telemetry.log_format", "choice", "text",
            "`json`: one object per line with `time`, `level`, `logger`, `message`, `fields` (the production "
            "template's choice)",
            choices=("text", "json")),
    Setting("shutdown_timeout", "duration", "10s", "bound on the graceful flush at SIGTERM"),
    Setting("pipeline", "section", list(DEFAULT_PIPELINE),
            "ordered list of stages, each `{type: KIND, ...}`", shown=" → ".join(DEFAULT_PIPELINE)),
    # Stage settings that the templates and docs repeat; each stage's other keys are in the annotated example.
    Setting("tail_sampling.decision_wait", "duration", "10s",
            "a trace is decided this long after its first span (or earlier, see `root_grace`)"),
    Setting("tail_sampling.root_grace", "duration", "2s", "decide this long after the root span arrived"),
    Setting("tail_sampling.max_bytes", "size", "256MiB",
            "trace buffer budget (serialized span bytes); over it the oldest traces are decided early"),
    Setting("tail_sampling.max_traces", "int", 250_000, "trace count limit (`max_bytes` is what bounds memory)"),
    Setting("tail_sampling.max_spans_per_trace", "int", 5_000, "a bigger trace is decided early"),
    Setting("tail_sampling.decision_cache_size", "int", 200_000, "decisions remembered for late spans"),
    Setting("tail_sampling.flush_interval", "duration", "100ms", "how often due traces are decided"),
    Setting("spanmetrics.series_limit", "int", 2000, "series per derived metric; more fold into an overflow series"),
    Setting("spanmetrics.flush_interval", "duration", "15s", "derived metrics are sent on as OTLP this often"),
    Setting("cardinality.series_limit", "int", 2000, "series per metric name passing through"),
)}


def value(key: str) -> Any:
    """The default of `key`, parsed (seconds for durations, bytes for sizes)."""
    setting = SETTINGS[key]
    if setting.default is None or setting.kind in ("endpoint", "choice", "str", "list", "section"):
        return setting.default
    node = Node({"default": setting.default}, "<processor/schema.py>", setting.key)
    if setting.kind == "path":
        return Path(setting.default)
    readers = {"size": node.size, "duration": node.duration, "int": node.int, "bool": node.bool}
    return readers[setting.kind]("default")


def _shown(setting: Setting) -> str:
    if setting.shown:
        return setting.shown
    if isinstance(setting.default, bool):
        return f"`{str(setting.default).lower()}`"
    return f"`{setting.default}`"


def markdown_table() -> str:
    """README's configuration table (`recohop config reference` prints it)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for setting in SETTINGS.values():
        key = f"`{setting.key}`" if "." in setting.key or setting.key in ("pipeline", "shutdown_timeout") else \
            setting.key
        if setting.key.startswith(("tail_sampling.", "spanmetrics.", "cardinality.")):
            stage, _, leaf = setting.key.partition(".")
            key = f"`pipeline[{stage}].{leaf}`"
        doc = setting.doc + (f" (one of {', '.join(f'`{c}`' for c in setting.choices)})" if setting.choices else "")
        rows.append(f"| {key} | {_shown(setting)} | {doc} |")
    return "\n".join(rows) + "\n"
