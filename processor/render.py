"""Render the collector-chain templates in `collector-config/templates/` (shipped with recohop, see
processor/assets.py) from a few named parameters.

Plain text templating on purpose: a template is the complete, commented file a person would copy, with
`${name}` placeholders (lower-case names only, so otelcol's own `${env:VAR}` passes through untouched).
A choice parameter may select a fragment file `_<name>_<value>.yaml` that is pasted in for `${<name>_block}`.
Every rendered YAML file is parsed before it is returned, so a bad value fails here, not in the collector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from processor.assets import collector_config_dir
from processor.schema import SETTINGS

COLLECTOR_CONFIG_DIR = collector_config_dir()
TEMPLATES_DIR = COLLECTOR_CONFIG_DIR / "templates"

PLACEHOLDER = re.compile(r"\$\{([a-z][a-z0-9_]*)\}")

# The hop config references its rule files by these flat names, next to itself (in the output directory, or
# in the ConfigMap mounted at /etc/recohop). Sources are owned by the sampling, redaction and derivation work.
COMPANION_FILES: dict[str, Path] = {
    "policies.yaml": COLLECTOR_CONFIG_DIR / "policies" / "default.yaml",
    "redaction.yaml": COLLECTOR_CONFIG_DIR / "redaction" / "default.yaml",
    "derivations.yaml": COLLECTOR_CONFIG_DIR / "derivations" / "default.yaml",
}


class RenderError(ValueError):
    """A rendering problem phrased for the person running `recohop config render`."""


# ---------------------------------------------------------------------------------------------- value kinds

def _pattern(regex: str, what: str) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"expected {what}")
        return value

    return check


def _port(value: str) -> str:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError("expected a port number 1-65535")
    return str(int(value))


def _positive_int(value: str) -> str:
    if not value.isdigit() or int(value) < 1:
        raise ValueError("expected a positive integer")
    return str(int(value))


def _endpoint_list(value: str) -> str:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError("expected a comma-separated list of host:port")
    for item in items:
        _ENDPOINT(item)
    return ",".join(items)


def _quoted(value: str) -> str:
    """Free text rendered as a YAML double-quoted scalar (JSON strings are valid YAML)."""
    if "\n" in value or "\r" in value:
        raise ValueError("expected a single line")
    return json.dumps(value)


_HOST = _pattern(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", "a host name or IP address")
_ENDPOINT = _pattern(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:\d{1,5}", "host:port")
_DNS_LABEL = _pattern(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "a Kubernetes name (lower-case DNS label)")
_URL = _pattern(r"https?://[A-Za-z0-9.:/_%-]+", "an http(s) URL")
_DURATION = _pattern(r"\d+(ms|s|m|h)", "a duration such as 500ms, 15s, 1m")
_CPU = _pattern(r"\d+(\.\d+)?m?", "a CPU quantity such as 500m or 2")
_IMAGE = _pattern(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", "a container image reference")
_PATH = _pattern(r"[A-Za-z0-9._/-]+", "a file path (letters, digits, . _ / -)")


@dataclass(frozen=True)
class Param:
    default: str
    check: Callable[[str], str]
    help: str
    choices: tuple[str, ...] = ()

    def validate(self, name: str, value: str) -> str:
        if self.choices:
            if value not in self.choices:
                raise RenderError(f"parameter {name}: expected one of {', '.join(self.choices)}, got '{value}'")
            return value
        try:
            return self.check(value)
        except ValueError as exc:
            shown = f"'{value}'" if len(value) <= 60 and name != "pseudonym_key" else f"{len(value)} characters"
            raise RenderError(f"parameter {name}: {exc}, got {shown}") from None


def _choice(default: str, choices: tuple[str, ...], help: str) -> Param:
    return Param(default, str, help, choices)


# Every settable parameter. Which profile uses which follows from the placeholders in its templates.
PARAMETERS: dict[str, Param] = {
    # where things run
    "namespace": Param("observability", _DNS_LABEL, "Kubernetes namespace of the gateway, recohop and backend"),
    "gateway_host": Param("otel-gateway", _HOST, "host (or Service) of the gateway collector, as agents see it"),
    "gateway_otlp_port": Param("4317", _port, "OTLP gRPC port the gateway listens on"),
    "recohop_service": Param("recohop", _DNS_LABEL, "name of recohop's headless Service and StatefulSet"),
    "recohop_otlp_port": Param("4317", _port, "OTLP gRPC port recohop listens on (also its health service)"),
    "recohop_metrics_port": Param("9464", _port, "port of recohop's Prometheus /metrics"),
    "recohop_listen_host": Param("0.0.0.0", _HOST, "address recohop binds (0.0.0.0 behind a gateway or in a pod)"),
    "backend_host": Param("otel-backend", _HOST, "host (or Service) of the backend collector after recohop"),
    "backend_otlp_port": Param("4317", _port, "OTLP gRPC port the backend collector listens on"),
    "listen_host": Param("0.0.0.0", _HOST, "address the agent/gateway/backend collectors bind their receivers to"),
    "health_check_port": Param("13133", _port, "port of each collector's health_check extension (GET / is 200 when up)"),
    "collector_metrics_port": Param("8888", _port, "port of each collector's own Prometheus metrics"),
    # agent
    "agent_grpc_port": Param("4317", _port, "OTLP gRPC port the agent listens on for apps"),
    "agent_http_port": Param("4318", _port, "OTLP HTTP port the agent listens on for apps"),
    "agent_memory_limit_mib": Param("400", _positive_int, "agent memory_limiter limit (MiB)"),
    # gateway
    "resolver": _choice("dns", ("dns", "k8s", "static"),
                        "how the gateway finds recohop instances: headless-Service DNS, the k8s API, or a list"),
    "recohop_hosts": Param("recohop-0:4317,recohop-1:4317,recohop-2:4317", _endpoint_list,
                           "static resolver only: comma-separated host:port of every recohop instance"),
    "gateway_memory_limit_mib": Param("1500", _positive_int, "gateway memory_limiter limit (MiB)"),
    # recohop
    "recohop_exporter": _choice("otlp", ("otlp", "file"),
                                "where recohop sends what it keeps: the backend collector or a local file sink"),
    "file_sink_path": Param("recohop-out/export.jsonl", _PATH, "file exporter only: the OTLP JSON lines file"),
    "export_compression": _choice("gzip", ("none", "gzip"), "compression of recohop's OTLP export"),
    "memory_limit_mib": Param("1024", _positive_int,
                              "recohop's memory budget (MiB): the pod limit; buffer and queue sizes derive from it"),
    "data_dir": Param("/var/lib/recohop", _PATH,
                      "recohop's data directory: the tail-sampling write-ahead log and the export disk queue"),
    "data_volume_mib": Param("2048", _positive_int,
                             "size of recohop's data volume (MiB): the WAL and disk queue budgets derive from it"),
    "decision_wait": Param(SETTINGS["tail_sampling.decision_wait"].default, _DURATION,
                           "how long recohop buffers a trace before the sampling decision"),
    "log_level": _choice("info", ("debug", "info", "warning", "error"), "recohop log level"),
    # kubernetes
    "replicas": Param("3", _positive_int, "number of recohop instances"),
    "image": Param("recohop:0.1.0", _IMAGE, "recohop container image"),
    "cpu_request": Param("500m", _CPU, "recohop CPU request"),
    "cpu_limit": Param("2", _CPU, "recohop CPU limit"),
    "pseudonym_key_secret": Param("recohop-pseudonym-key", _DNS_LABEL,
                                  "Secret holding the HMAC pseudonym key (env RECOHOP_PSEUDONYM_KEY)"),
    "pseudonym_key": Param("", _quoted,
                           "the key itself, written into the Secret; leave empty and create the Secret yourself"),
    # backend
    "trace_backend_endpoint": Param("tempo:4317", _ENDPOINT, "OTLP gRPC endpoint of Tempo or Jaeger"),
    "remote_write_url": Param("http://prometheus:9090/api/v1/write", _URL, "Prometheus remote-write URL"),
    "logs_backend_url": Param("http://loki:3100/otlp", _URL, "OTLP/HTTP base URL for logs (Loki 3 native OTLP)"),
    "scrape_interval": Param("15s", _DURATION, "Prometheus scrape interval for recohop's /metrics"),
    "backend_exporter": _choice("remote", ("remote", "file"),
                                "where the backend collector sends: Tempo/remote write/Loki, or local OTLP JSON files"),
    "backend_file_dir": Param("/var/lib/otelcol/recohop-backend", _PATH,
                              "file backend only: directory of traces.jsonl, metrics.jsonl, logs.jsonl"),
}

# Values derived from parameters (never set directly): name -> (the parameters it derives from, explanation).
DERIVED: dict[str, tuple[tuple[str, ...], str]] = {
    "sampling_max_bytes": (("memory_limit_mib",), "45% of memory_limit_mib: the tail-sampling trace buffer"),
    "queue_max_bytes": (("memory_limit_mib",), "15% of memory_limit_mib: the exporter's byte queue"),
    "memory_request_mib": (("memory_limit_mib",),
                           "memory_limit_mib (request = limit: the hop must not be OOM-killed under pressure)"),
    "agent_spike_limit_mib": (("agent_memory_limit_mib",), "20% of agent_memory_limit_mib"),
    "gateway_spike_limit_mib": (("gateway_memory_limit_mib",), "20% of gateway_memory_limit_mib"),
    "recohop_hosts_list": (("recohop_hosts",), "recohop_hosts as a YAML list"),
    "backend_traces_exporter": (("backend_exporter",), "the backend's traces exporter for backend_exporter"),
    "backend_metrics_exporter": (("backend_exporter",), "the backend's metrics exporter for backend_exporter"),
    "backend_logs_exporter": (("backend_exporter",), "the backend's logs exporter for backend_exporter"),
    "wal_max_bytes": (("data_volume_mib",), "25% of data_volume_mib: the tail-sampling write-ahead log"),
    "spill_max_bytes": (("data_volume_mib",), "50% of data_volume_mib: the exporter's disk queue"),
    "termination_grace_seconds": (("decision_wait",),
                                  "decision_wait + 20s, so a stopping pod decides and flushes its buffered traces"),
}


@dataclass(frozen=True)
class Profile:
    help: str
    # (template path under templates/, output file name)
    files: tuple[tuple[str, str], ...]
    # Choice parameters whose value selects a fragment `_<param>_<value>.yaml` next to the templates.
    fragments: tuple[str, ...] = ()
    # Other profiles rendered into this one (their parameters apply too).
    includes: tuple[str, ...] = ()
    # Profile-specific defaults that differ from PARAMETERS.
    defaults: dict[str, str] = field(default_factory=dict)
    companions: bool = False


PROFILES: dict[str, Profile] = {
    "agent": Profile("otelcol-contrib on each node or as a sidecar: OTLP in, memory_limiter, batch, OTLP to the gateway",
                     (("agent/otelcol-agent.yaml", "otelcol-agent.yaml"),)),
    "gateway": Profile("otelcol with the loadbalancing exporter: every span of a trace reaches the same recohop",
                       (("gateway/otelcol-gateway.yaml", "otelcol-gateway.yaml"),), fragments=("resolver",)),
    "recohop": Profile("the hop's own config, with the default policy, redaction and derivation files",
                       (("recohop/recohop.yaml", "recohop.yaml"),), fragments=("recohop_exporter",),
                       companions=True),
    "backend": Profile("otelcol after recohop (Tempo/Jaeger, Prometheus remote write) and a Prometheus scrape config",
                       (("backend/otelcol-backend.yaml", "otelcol-backend.yaml"),
                        ("backend/prometheus.yml", "prometheus.yml")), fragments=("backend_exporter",)),
    "kubernetes": Profile("recohop StatefulSet, headless Service, ConfigMap and pseudonym-key Secret",
                          (("kubernetes/service.yaml", "service.yaml"),
                           ("kubernetes/configmap.yaml", "configmap.yaml"),
                           ("kubernetes/secret.yaml", "secret.yaml"),
                           ("kubernetes/statefulset.yaml", "statefulset.yaml")),
                          includes=("recohop",),
                          # In a pod the hop exports to the backend Service; a file sink would die with the pod.
                          defaults={"recohop_exporter": "otlp", "recohop_listen_host": "0.0.0.0"}),
}


# ------------------------------------------------------------------------------------------------ rendering

def _read_template(rel: str) -> str:
    path = TEMPLATES_DIR / rel
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"template {path}: {exc.strerror or exc}") from None


def _fragment_path(profile_dir: str, param: str, value: str) -> str:
    return f"{profile_dir}/_{param}_{value}.yaml"


def _profile_dir(profile: Profile) -> str:
    return profile.files[0][0].split("/", 1)[0]


def _texts_by_variant(name: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The profile's (and included profiles') template texts, and per fragment param: value -> fragment text."""
    profile = PROFILES[name]
    texts = [_read_template(rel) for rel, _ in profile.files]
    variants: dict[str, dict[str, str]] = {}
    for param in profile.fragments:
        variants[param] = {v: _read_template(_fragment_path(_profile_dir(profile), param, v))
                           for v in PARAMETERS[param].choices}
    for inc in profile.includes:
        inc_texts, inc_variants = _texts_by_variant(inc)
        texts += inc_texts
        variants.update(inc_variants)
    return texts, variants


def _placeholders(texts: list[str]) -> set[str]:
    return {m.group(1) for text in texts for m in PLACEHOLDER.finditer(text)}


def _settable(names: set[str]) -> set[str]:
    """Placeholders -> the parameters behind them (a derived value stands for the parameters it uses)."""
    out = {n for n in names if n in PARAMETERS}
    for name in names & set(DERIVED):
        out.update(DERIVED[name][0])
    return out


def profile_parameters(name: str) -> dict[str, str]:
    """Settable parameter -> default for a profile (any fragment variant), e.g. for `--help` and tests."""
    if name not in PROFILES:
        raise RenderError(f"unknown profile '{name}'; expected one of {', '.join(PROFILES)}")
    texts, variants = _texts_by_variant(name)
    used = _placeholders(texts) | {p for v in variants.values() for p in _placeholders(list(v.values()))}
    used |= set(variants)
    defaults = _defaults(name)
    return {p: defaults[p] for p in sorted(_settable(used))}


def _defaults(name: str) -> dict[str, str]:
    values = {n: p.default for n, p in PARAMETERS.items()}
    for inc in PROFILES[name].includes:
        values.update(PROFILES[inc].defaults)
    values.update(PROFILES[name].defaults)
    return values


def _derive(values: dict[str, str]) -> dict[str, str]:
    mib = 1024 * 1024
    budget = int(values["memory_limit_mib"])
    hosts = values["recohop_hosts"].split(",")
    amount, unit = re.fullmatch(r"(\d+)([a-z]+)", values["decision_wait"]).groups()  # type: ignore[union-attr]
    wait_s = int(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return {
        "sampling_max_bytes": str(budget * mib * 45 // 100),
        "queue_max_bytes": str(budget * mib * 15 // 100),
        "memory_request_mib": str(budget),
        "wal_max_bytes": str(int(values["data_volume_mib"]) * mib * 25 // 100),
        "spill_max_bytes": str(int(values["data_volume_mib"]) * mib * 50 // 100),
        "agent_spike_limit_mib": str(max(1, int(values["agent_memory_limit_mib"]) // 5)),
        "gateway_spike_limit_mib": str(max(1, int(values["gateway_memory_limit_mib"]) // 5)),
        "recohop_hosts_list": "\n".join(f"          - {h}" for h in hosts),
        "termination_grace_seconds": str(int(wait_s) + 20),
        **BACKEND_EXPORTERS[values["backend_exporter"]],
    }


# The backend's exporter ids per backend_exporter choice (defined in backend/_backend_exporter_<choice>.yaml).
BACKEND_EXPORTERS: dict[str, dict[str, str]] = {
    "remote": {"backend_traces_exporter": "otlp/traces", "backend_metrics_exporter": "prometheusremotewrite",
               "backend_logs_exporter": "otlphttp/logs"},
    "file": {"backend_traces_exporter": "file/traces", "backend_metrics_exporter": "file/metrics",
             "backend_logs_exporter": "file/logs"},
}


def _substitute(text: str, values: dict[str, str], where: str) -> str:
    def repl(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise RenderError(f"{where}: placeholder ${{{key}}} has no value (a template bug)")
        return values[key]

    return PLACEHOLDER.sub(repl, text)


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.rstrip("\n").split("\n"))


def _companions() -> dict[str, str]:
    out: dict[str, str] = {}
    for flat, source in COMPANION_FILES.items():
        try:
            out[flat] = source.read_text(encoding="utf-8")
        except OSError:
            raise RenderError(f"{source} is missing: the recohop config references it as {flat}") from None
    return out


def _check_known(name: str, overrides: dict[str, str], all_used: set[str]) -> None:
    for key in overrides:
        if key in DERIVED:
            raise RenderError(f"parameter {key} cannot be set: it is derived ({DERIVED[key][1]})")
        if key not in all_used:
            known = ", ".join(sorted(all_used))
            raise RenderError(f"unknown parameter '{key}' for profile {name}; known parameters: {known}")


def _check_used(name: str, overrides: dict[str, str], used: set[str]) -> None:
    """A parameter of another fragment variant (e.g. recohop_hosts with resolver=dns) would be silently ignored."""
    for key in overrides:
        if key not in used:
            owners = [f"{p}={v}" for p in PARAMETERS if PARAMETERS[p].choices
                      for v in PARAMETERS[p].choices if key in _settable(_fragment_params(p, v))]
            hint = f" (it applies with {' or '.join(owners)})" if owners else ""
            raise RenderError(f"parameter {key} is not used by profile {name} as configured{hint}")


def _fragment_params(param: str, value: str) -> set[str]:
    for profile in PROFILES.values():
        if param in profile.fragments:
            return _placeholders([_read_template(_fragment_path(_profile_dir(profile), param, value))])
    return set()


def render(profile: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Render one profile: output file name -> text. Raises RenderError for bad profiles or parameters."""
    overrides = dict(overrides or {})
    files, used = _render_profile(profile, overrides)
    _check_used(profile, overrides, used)
    return files


def _render_profile(profile: str, overrides: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """The rendered files and the parameters this rendering actually used (given the chosen fragments)."""
    if profile not in PROFILES:
        raise RenderError(f"unknown profile '{profile}'; expected one of {', '.join(PROFILES)}")
    _check_known(profile, overrides, set(profile_parameters(profile)))
    values = {key: PARAMETERS[key].validate(key, value) for key, value in _defaults(profile).items()}
    for key, value in overrides.items():
        values[key] = PARAMETERS[key].validate(key, value)
    texts, variants = _texts_by_variant(profile)
    blocks = {f"{p}_block": variants[p][values[p]].rstrip("\n") for p in variants}
    used = _settable(_placeholders(texts + list(blocks.values()))) | set(variants)
    values.update(_derive(values))
    values.update({k: _substitute(v, values, k) for k, v in blocks.items()})
    return _render_files(profile, values), used


def _render_files(name: str, values: dict[str, str]) -> dict[str, str]:
    profile = PROFILES[name]
    values = dict(values)
    out: dict[str, str] = {}
    for inc in profile.includes:
        for fname, text in _render_files(inc, values).items():
            # Included files are embedded (e.g. in a ConfigMap) as ${<name>_yaml_embedded}, not written alone.
            values[fname.replace(".", "_").replace("-", "_") + "_embedded"] = _indent(text, 4)
    for rel, fname in profile.files:
        text = _substitute(_read_template(rel), values, rel)
        out[fname] = text
    if profile.companions:
        out.update(_companions())
    for fname, text in out.items():
        _parse_check(name, fname, text)
    return out


def _parse_check(profile: str, fname: str, text: str) -> None:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise RenderError(f"profile {profile}: rendered {fname} is not valid YAML ({line.strip() or 'parse error'});"
                          " a parameter value probably broke it") from None
    if not any(d is not None for d in docs):
        raise RenderError(f"profile {profile}: rendered {fname} is empty")


def render_all(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Every profile, as `<profile>/<file>`; an override applies to the profiles that use it, and must be used
    by at least one (so `--set recohop_otlp_port=...` moves the gateway's targets and the hop's receiver together)."""
    overrides = dict(overrides or {})
    known: set[str] = set()
    used: set[str] = set()
    out: dict[str, str] = {}
    for name in PROFILES:
        params = set(profile_parameters(name))
        known |= params
        files, used_here = _render_profile(name, {k: v for k, v in overrides.items() if k in params})
        used |= used_here
        out.update({f"{name}/{fname}": text for fname, text in files.items()})
    for key in sorted(overrides):
        if key in DERIVED:
            raise RenderError(f"parameter {key} cannot be set: it is derived ({DERIVED[key][1]})")
        if key not in known:
            raise RenderError(f"unknown parameter '{key}'; known parameters: {', '.join(sorted(known))}")
        if key not in used:
            raise RenderError(f"parameter {key} is used by no profile as configured (check the choice parameters)")
    return out


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`key=value` strings (from `--set`) into a dict, with a clear error for anything else."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RenderError(f"--set expects key=value, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def write(files: dict[str, str], out_dir: Path) -> list[Path]:
    written = []
    for fname, text in sorted(files.items()):
        path = out_dir / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
