"""Structural checks of an otelcol config (what `otelcol validate` checks about wiring, without the binary)."""

from __future__ import annotations

from typing import Any

SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")
SIGNALS = ("traces", "metrics", "logs")


def otelcol_problems(cfg: dict[str, Any]) -> list[str]:
    """Every problem found: unknown top-level keys, undefined or unused components, empty pipelines."""
    problems: list[str] = []
    for key in cfg:
        if key not in (*SECTIONS, "service"):
            problems.append(f"unknown top-level key {key}")
    defined = {section: set((cfg.get(section) or {}).keys()) for section in SECTIONS}
    for section, ids in defined.items():
        for cid in ids:
            kind, _, name = cid.partition("/")
            if not kind or (cid.count("/") > 1) or ("/" in cid and not name):
                problems.append(f"{section}: malformed component id '{cid}'")
    service = cfg.get("service") or {}
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        problems.append("service.pipelines is empty")
    used: dict[str, set[str]] = {section: set() for section in SECTIONS}
    for pid, pipeline in pipelines.items():
        if pid.partition("/")[0] not in SIGNALS:
            problems.append(f"pipeline '{pid}': type must be one of {SIGNALS}")
        for role in ("receivers", "processors", "exporters"):
            for cid in pipeline.get(role) or []:
                # A connector is an exporter of one pipeline and a receiver of another.
                section = "connectors" if role != "processors" and cid in defined["connectors"] else role
                if cid not in defined[section]:
                    problems.append(f"pipeline '{pid}': {role[:-1]} '{cid}' is not defined under {role}")
                used[section].add(cid)
        if not pipeline.get("receivers"):
            problems.append(f"pipeline '{pid}' has no receivers")
        if not pipeline.get("exporters"):
            problems.append(f"pipeline '{pid}' has no exporters")
        if len(set(pipeline.get("processors") or [])) != len(pipeline.get("processors") or []):
            problems.append(f"pipeline '{pid}' lists a processor twice")
        procs = pipeline.get("processors") or []
        if "memory_limiter" in procs and procs[0] != "memory_limiter":
            problems.append(f"pipeline '{pid}': memory_limiter must be the first processor")
    for ext in service.get("extensions") or []:
        used["extensions"].add(ext)
        if ext not in defined["extensions"]:
            problems.append(f"service.extensions: '{ext}' is not defined")
    for section in SECTIONS:
        for cid in sorted(defined[section] - used[section]):
            problems.append(f"{section}: '{cid}' is defined but used by no pipeline")
    return problems


def grpc_receiver_port(cfg: dict[str, Any], receiver: str = "otlp") -> int:
    return int(cfg["receivers"][receiver]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1])


def exporter_endpoint(cfg: dict[str, Any], exporter: str) -> str:
    return str(cfg["exporters"][exporter]["endpoint"])


def loadbalancing_targets(exporter_cfg: dict[str, Any]) -> tuple[str, list[int]]:
    """(resolver kind, the recohop ports it points at) of one loadbalancing exporter."""
    resolver = exporter_cfg["resolver"]
    assert len(resolver) == 1, f"exactly one resolver expected, got {sorted(resolver)}"
    kind, spec = next(iter(resolver.items()))
    if kind == "dns":
        return kind, [int(spec["port"])]
    if kind == "k8s":
        return kind, [int(p) for p in spec["ports"]]
    return kind, [int(h.rsplit(":", 1)[1]) for h in spec["hostnames"]]
