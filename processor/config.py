"""The hop's configuration: parsing and validation with file:key error messages; defaults from processor/schema.py.

Stage sections are validated by the stage kinds themselves (`processor/stages/*`), through the same `Node`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from processor.config_node import ConfigError, Node
from processor.schema import SETTINGS, value
from processor.spillqueue import FSYNC_POLICIES

DEFAULTS_DIR = Path(__file__).parent / "defaults"
DEFAULT_CONFIG = DEFAULTS_DIR / "hop.yaml"


@dataclass
class TlsConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    # Receiver: require and verify client certificates (mutual TLS).
    client_auth: bool = False


@dataclass
class HttpReceiverConfig:
    """OTLP/HTTP beside the gRPC receiver: same pipeline, admission, size limit, TLS and auth."""

    endpoint: str = value("receiver.http.endpoint")
    # Browser origins allowed by CORS (exact, or with * wildcards such as https://*.example.com); none: no CORS.
    cors_allowed_origins: tuple[str, ...] = ()
    cors_max_age: int = int(value("receiver.http.cors.max_age"))
    # Only the zero-config default: when its endpoint is taken the hop warns and serves gRPC alone.
    optional: bool = False


@dataclass
class ReceiverConfig:
    endpoint: str = value("receiver.endpoint")
    max_recv_msg_size: int = value("receiver.max_recv_msg_size")
    workers: int = value("receiver.workers")
    # Requests admitted at once (parsing or waiting for the pipeline); more are refused at once with
    # RESOURCE_EXHAUSTED + RetryInfo, so a CPU-bound hop pushes back instead of queueing without bound.
    max_pending_requests: int = value("receiver.max_pending_requests")
    tls: TlsConfig | None = None
    # Clients must send `authorization: Bearer <token>`; the token comes from env or a file, never the config.
    bearer_token: bytes | None = None
    # OTLP/HTTP receiver; None: off.
    http: HttpReceiverConfig | None = None
    # On SIGTERM: health NOT_SERVING at once, but keep accepting this long, so a gateway that re-resolves its
    # recohop instances every few seconds has moved away before the receiver closes.
    drain_window: float = value("receiver.drain_window")


@dataclass
class RetryConfig:
    initial_interval: float = value("exporter.retry.initial_interval")
    max_interval: float = value("exporter.retry.max_interval")
    max_elapsed_time: float = value("exporter.retry.max_elapsed_time")


@dataclass
class FileSinkConfig:
    path: Path = value("exporter.file.path")
    max_bytes: int = value("exporter.file.max_bytes")
    backups: int = value("exporter.file.backups")


@dataclass
class SpillConfig:
    """Disk queue the exporter spills to when its memory queue is full (absent: memory only)."""

    dir: Path
    max_bytes: int = value("exporter.spill.max_bytes")
    # always: fsync every record; interval: about once a second; never: leave it to the OS.
    fsync: str = value("exporter.spill.fsync")


@dataclass
class ExporterConfig:
    # "host:port" of the next OTLP gRPC hop; None means the local file sink.
    endpoint: str | None = None
    file: FileSinkConfig = field(default_factory=FileSinkConfig)
    compression: str = value("exporter.compression")
    timeout: float = value("exporter.timeout")
    insecure: bool = value("exporter.insecure")
    tls: TlsConfig | None = None
    queue_max_bytes: int = value("exporter.queue.max_bytes")
    consumers: int = value("exporter.queue.consumers")
    # Queued requests are joined into calls of up to this size (keep it under the next hop's receive limit).
    send_batch_max_bytes: int = value("exporter.queue.send_batch_max_bytes")
    retry: RetryConfig = field(default_factory=RetryConfig)
    # Sent as `authorization: Bearer <token>` to the next hop; read from this environment variable.
    bearer_token_env: str | None = None
    spill: SpillConfig | None = None


@dataclass
class TelemetryConfig:
    metrics_endpoint: str | None = value("telemetry.metrics_endpoint")
    log_level: str = value("telemetry.log_level")
    # text: one human line per record; json: one JSON object per line (time, level, logger, message, fields).
    log_format: str = value("telemetry.log_format")


@dataclass
class HopConfig:
    source: Path
    receiver: ReceiverConfig
    exporter: ExporterConfig
    telemetry: TelemetryConfig
    stage_nodes: list[Node]
    # True when running the built-in zero-config default (allows e.g. a throwaway pseudonym key).
    builtin_default: bool = False
    shutdown_timeout: float = value("shutdown_timeout")


def _endpoint(node: Node, key: str, default: str | None) -> str | None:
    value = node.raw(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or ":" not in value or not value.rsplit(":", 1)[1].isdigit():
        raise node.error(key, "an endpoint host:port such as 127.0.0.1:4317", value)
    return value


def _tls(node: Node, key: str) -> TlsConfig | None:
    if not node.has(key):
        node.raw(key)
        return None
    tls = node.child(key)
    cfg = TlsConfig(cert_file=tls.path_value("cert_file"), key_file=tls.path_value("key_file"),
                    ca_file=tls.path_value("ca_file"), client_auth=tls.bool("client_auth", False))
    tls.done()
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise tls.error("cert_file", "cert_file and key_file given together")
    return cfg


def _bearer_token(node: Node) -> bytes | None:
    """The receiver's auth token from `auth.bearer_token_env` or `auth.bearer_token_file`."""
    if not node.has("auth"):
        node.raw("auth")
        return None
    auth = node.child("auth")
    env_name = auth.opt_str("bearer_token_env")
    token_file = auth.path_value("bearer_token_file")
    auth.done()
    if (env_name is None) == (token_file is None):
        raise auth.error("bearer_token_env", "exactly one of bearer_token_env or bearer_token_file")
    if env_name is not None:
        token = os.environ.get(env_name, "")
        if not token:
            raise auth.error("bearer_token_env", f"environment variable {env_name} to be set and non-empty")
        return token.encode()
    try:
        token = token_file.read_text().strip()  # type: ignore[union-attr]
    except OSError:
        raise auth.error("bearer_token_file", "a readable token file") from None
    if not token:
        raise auth.error("bearer_token_file", "a non-empty token file")
    return token.encode()


def _receiver(node: Node) -> ReceiverConfig:
    cfg = ReceiverConfig(
        endpoint=_endpoint(node, "endpoint", ReceiverConfig.endpoint) or ReceiverConfig.endpoint,
        max_recv_msg_size=node.size("max_recv_msg_size", ReceiverConfig.max_recv_msg_size),
        workers=node.int("workers", ReceiverConfig.workers, minimum=1),
        max_pending_requests=node.int("max_pending_requests", ReceiverConfig.max_pending_requests, minimum=1),
        tls=_tls(node, "tls"),
        bearer_token=_bearer_token(node),
        http=_http_receiver(node),
        drain_window=node.duration("drain_window", ReceiverConfig.drain_window),
    )
    node.done()
    return cfg


def _http_receiver(node: Node) -> HttpReceiverConfig | None:
    """`receiver.http`: absent, or `endpoint: off`, means no OTLP/HTTP receiver."""
    if not node.has("http"):
        node.raw("http")
        return None
    http = node.child("http")
    if http.raw("endpoint", HttpReceiverConfig.endpoint) in ("off", "none"):
        http.done()
        return None
    endpoint = _endpoint(http, "endpoint", HttpReceiverConfig.endpoint) or HttpReceiverConfig.endpoint
    cors = http.child("cors")
    origins = tuple(cors.str_list("allowed_origins", []))
    max_age = int(cors.duration("max_age", HttpReceiverConfig.cors_max_age))
    cors.done()
    for index, origin in enumerate(origins):
        if origin != "*" and "://" not in origin:
            raise cors.error(f"allowed_origins[{index}]", "an origin such as https://app.example.com", origin)
    http.done()
    return HttpReceiverConfig(endpoint=endpoint, cors_allowed_origins=origins, cors_max_age=max_age)


def _spill(node: Node, key: str) -> SpillConfig | None:
    if not node.has(key):
        node.raw(key)
        return None
    spill = node.child(key)
    directory = spill.path_value("dir")
    if directory is None:
        raise spill.error("dir", "a directory for the disk queue (required)")
    if directory.exists() and not directory.is_dir():
        raise spill.error("dir", "a directory (this path is a file)")
    cfg = SpillConfig(dir=directory, max_bytes=spill.size("max_bytes", SpillConfig.max_bytes),
                      fsync=spill.str("fsync", SpillConfig.fsync, choices=FSYNC_POLICIES))
    if cfg.max_bytes <= 0:
        raise spill.error("max_bytes", "a size above zero such as 1GiB", cfg.max_bytes)
    spill.done()
    return cfg


def _exporter(node: Node) -> ExporterConfig:
    file_node = node.child("file")
    file_cfg = FileSinkConfig(
        path=file_node.path_value("path", str(FileSinkConfig.path)) or FileSinkConfig.path,
        max_bytes=file_node.size("max_bytes", FileSinkConfig.max_bytes),
        backups=file_node.int("backups", FileSinkConfig.backups, minimum=0),
    )
    file_node.done()
    queue = node.child("queue")
    queue_max = queue.size("max_bytes", ExporterConfig.queue_max_bytes)
    consumers = queue.int("consumers", ExporterConfig.consumers, minimum=1)
    batch_max = queue.size("send_batch_max_bytes", ExporterConfig.send_batch_max_bytes)
    queue.done()
    retry = node.child("retry")
    retry_cfg = RetryConfig(
        initial_interval=retry.duration("initial_interval", RetryConfig.initial_interval),
        max_interval=retry.duration("max_interval", RetryConfig.max_interval),
        max_elapsed_time=retry.duration("max_elapsed_time", RetryConfig.max_elapsed_time),
    )
    retry.done()
    cfg = ExporterConfig(
        endpoint=_endpoint(node, "endpoint", None),
        file=file_cfg,
        compression=node.str("compression", ExporterConfig.compression, choices=SETTINGS["exporter.compression"].choices),
        timeout=node.duration("timeout", ExporterConfig.timeout),
        insecure=node.bool("insecure", ExporterConfig.insecure),
        tls=_tls(node, "tls"),
        queue_max_bytes=queue_max,
        consumers=consumers,
        send_batch_max_bytes=batch_max,
        retry=retry_cfg,
        bearer_token_env=node.opt_str("bearer_token_env"),
        spill=_spill(node, "spill"),
    )
    node.done()
    return cfg


def _telemetry(node: Node) -> TelemetryConfig:
    raw = node.raw("metrics_endpoint", TelemetryConfig.metrics_endpoint)
    cfg = TelemetryConfig(
        metrics_endpoint=None if raw in (None, "none", "off") else _endpoint(node, "metrics_endpoint", None),
        log_level=node.str("log_level", TelemetryConfig.log_level, choices=SETTINGS["telemetry.log_level"].choices),
        log_format=node.str("log_format", TelemetryConfig.log_format, choices=SETTINGS["telemetry.log_format"].choices),
    )
    node.done()
    return cfg


def parse_config(root: Node, builtin_default: bool = False) -> HopConfig:
    stage_nodes = list(root.children("pipeline"))
    cfg = HopConfig(
        source=Path(root.file),
        receiver=_receiver(root.child("receiver")),
        exporter=_exporter(root.child("exporter")),
        telemetry=_telemetry(root.child("telemetry")),
        stage_nodes=stage_nodes,
        builtin_default=builtin_default,
        shutdown_timeout=root.duration("shutdown_timeout", HopConfig.shutdown_timeout),
    )
    root.done()
    return cfg


def load_config(path: str | Path | None) -> HopConfig:
    """The hop config from `path`, or the built-in default when `path` is None."""
    if path is None:
        cfg = parse_config(Node.from_file(DEFAULT_CONFIG), builtin_default=True)
        # The default's file sink lives where the user runs recohop, not inside the installed package.
        cfg.exporter.file.path = cfg.exporter.file.path.relative_to(DEFAULTS_DIR)
        if cfg.receiver.http is not None:  # 4318 may be another collector's: warn instead of failing
            cfg.receiver.http.optional = True
        return cfg
    return parse_config(Node.from_file(path))


def apply_overrides(cfg: HopConfig, listen: str | None = None, forward: str | None = None,
                    metrics_listen: str | None = None, record: str | None = None,
                    http_listen: str | None = None) -> HopConfig:
    """Command-line overrides: `--listen`, `--forward HOST:PORT|file:PATH`, `--metrics-listen`, `--record`,
    `--http-listen HOST:PORT|off`."""
    cli = Node({"listen": listen, "forward": forward, "metrics_listen": metrics_listen,
                "http_listen": http_listen}, "<command line>")
    if listen:
        cfg.receiver.endpoint = _endpoint(cli, "listen", None) or listen
    if http_listen:
        if http_listen in ("none", "off"):
            cfg.receiver.http = None
        else:
            endpoint = _endpoint(cli, "http_listen", None) or http_listen
            if cfg.receiver.http is None:
                cfg.receiver.http = HttpReceiverConfig(endpoint=endpoint)
            cfg.receiver.http.endpoint = endpoint
            cfg.receiver.http.optional = False  # asked for on the command line: failing to listen is an error
    if forward:
        if forward.startswith("file:"):
            cfg.exporter.endpoint = None
            cfg.exporter.file.path = Path(forward[len("file:"):])
        else:
            cfg.exporter.endpoint = _endpoint(cli, "forward", None)
    if metrics_listen:
        cfg.telemetry.metrics_endpoint = (None if metrics_listen in ("none", "off")
                                          else _endpoint(cli, "metrics_listen", None))
    if record:
        # Right after redaction (or first): captures hold everything received, but never raw PII.
        stage = Node({"type": "record", "path": str(Path(record).resolve())}, "<command line>", "--record")
        kinds = [n.data.get("type") for n in cfg.stage_nodes]
        at = kinds.index("redaction") + 1 if "redaction" in kinds else 0
        cfg.stage_nodes.insert(at, stage)
    return cfg


__all__ = ["ConfigError", "HopConfig", "load_config", "apply_overrides", "parse_config", "DEFAULT_CONFIG"]
