"""`recohop policy import`: pick the components the collector runs, translate them, render the recohop files
with their provenance and notes as comments, check them with recohop's own loaders, and only then write them.

Output (in `--out DIR`): `policies.yaml` (tail_sampling), `redaction.yaml` (redaction), `derivations.yaml`
(spanmetrics) and `recohop.yaml`, a hop config whose pipeline runs them in otelcol's order with the stage
settings that have a place there (decision_wait, num_traces, metrics_flush_interval, ...).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from processor.cardinality.limits import DEFAULT_FORBIDDEN_KEYS, ForbiddenKeys
from processor.config import load_config
from processor.config_node import ConfigError
from processor.migrate import redaction, spanmetrics, tail_sampling
from processor.migrate.source import CollectorConfig, Component, Findings, Refused, load_collector_config
from processor.pipeline import build_pipeline
from processor.redaction.rules import load_rules_file
from processor.sampling.policyfile import load_policy_file
from processor.spanmetrics.rules import load_rules
from processor.stages.base import StageContext

POLICIES, REDACTION, DERIVATIONS, HOP = "policies.yaml", "redaction.yaml", "derivations.yaml", "recohop.yaml"
# (component kind, type) -> the recohop stage it becomes
IMPORTED = {("processors", "tail_sampling"): "tail_sampling", ("processors", "redaction"): "redaction",
            ("connectors", "spanmetrics"): "spanmetrics"}


@dataclass
class ImportResult:
    """What was written (file, one-line summary), what was refused or noted, and what stays in otelcol."""

    written: list[tuple[Path, str]] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    left_in_otelcol: list[str] = field(default_factory=list)


class _Flow(dict):  # type: ignore[type-arg]
    """A mapping written on one line: `{attribute: reco.placement}`."""


class _FlowList(list):  # type: ignore[type-arg]
    """A list written on one line: `[0.002, 0.004, ...]`."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _dump(data: Any, indent: int = 0) -> str:
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=110)
    return textwrap.indent(text, " " * indent)


def _comment(lines: list[str], indent: int = 0) -> str:
    pad = " " * indent
    out = []
    for line in lines:
        out += textwrap.wrap(line, 110, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}#   ",
                             break_long_words=False, break_on_hyphens=False)
    return "".join(f"{line}\n" for line in out)


def _select(cfg: CollectorConfig, only: list[str], findings: Findings) -> dict[str, Component]:
    """The one component per stage kind to import (used by a pipeline, or named with --only)."""
    known = {c.id for c in cfg.components}
    for cid in only:
        if cid not in known:
            raise ConfigError(cfg.file, cid, "a component id of this config (for --only)")
    chosen: dict[str, Component] = {}
    for (kind, type_name), stage in IMPORTED.items():
        candidates = []
        for component in cfg.of_type(kind, type_name):
            if only and component.id not in only:
                continue
            if not cfg.used(component):
                findings.note(component.path, "in no service pipeline: otelcol does not run it, so it is not "
                                              "imported")
                continue
            candidates.append(component)
        if len(candidates) > 1:
            ids = ", ".join(c.id for c in candidates)
            findings.refuse(Refused(f"{kind} ({ids})", f"several {type_name} components; a hop runs one "
                                                       f"{stage} stage: import one at a time with --only ID"))
        elif candidates:
            chosen[stage] = candidates[0]
    return chosen


def _order(cfg: CollectorConfig, chosen: dict[str, Component], findings: Findings) -> list[str]:
    """Stage order: recohop's (redaction, spanmetrics, tail_sampling), unless otelcol's pipelines put redaction
    or span metrics after tail sampling; then the hop does the same (and says so)."""
    ts, red, sm = (chosen.get(k) for k in ("tail_sampling", "redaction", "spanmetrics"))
    sm_after = red_after = False
    for p in cfg.pipelines:
        if ts and ts.id in p.processors:
            if sm and sm.id in p.exporters:
                sm_after = True
            if red and red.id in p.processors and p.processors.index(red.id) > p.processors.index(ts.id):
                red_after = True
    if sm is not None and sm_after:
        findings.note(sm.path, "otelcol counts spans after tail sampling (its connector is an exporter of the "
                               "sampled pipeline): the hop does the same; put spanmetrics before tail_sampling in "
                               "recohop.yaml to count 100 % of spans")
    if red is not None and red_after:
        findings.note(red.path, "otelcol redacts after tail sampling, so its policies see unredacted values: the "
                                "hop does the same")
    if red and sm and not sm_after and cfg.has_service and not any(
            red.id in p.processors and sm.id in p.exporters for p in cfg.pipelines):
        findings.note(sm.path, "otelcol's connector reads spans its redaction processor has not changed; the hop "
                               "redacts before it derives metrics")
    order = [s for s in ("redaction", "spanmetrics", "tail_sampling") if s in chosen]
    after = [s for s in ("redaction", "spanmetrics") if s in chosen and (red_after if s == "redaction" else sm_after)]
    return [s for s in order if s not in after] + after


def _render(source: str, chosen: dict[str, Component], order: list[str], ts: Any, red: Any, sm: Any) -> dict[str, str]:
    files: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    origin = f"`recohop policy import` from {source}"
    if ts is not None:
        head = _comment([f"Tail-sampling policies imported by {origin} ({chosen['tail_sampling'].path}), with "
                         "otelcol v0.158's semantics. Check: recohop policy check policies.yaml"])
        body = "".join("\n" + _comment(comment, 2) + _dump([policy], 2)
                       for policy, comment in zip(ts.policies, ts.comments, strict=True))
        files[POLICIES] = head + "policies:" + body
    if red is not None:
        head = _comment([f"Redaction rules imported by {origin} ({chosen['redaction'].path}), with otelcol v0.158's "
                         "semantics. Check: recohop redact check redaction.yaml", *red.comments])
        rules = dict(red.rules)
        rules["rules"] = [_Flow(rule) for rule in rules["rules"]]
        files[REDACTION] = head + _dump(rules)
    if sm is not None:
        head = _comment([f"Span metrics imported by {origin} ({chosen['spanmetrics'].path}), with otelcol v0.158's "
                         "semantics; read by the spanmetrics stage of recohop.yaml.", *sm.comments])
        rules = [{**rule, **({"buckets": _FlowList(rule["buckets"])} if "buckets" in rule else {}),
                  "labels": {k: _Flow(v) for k, v in rule["labels"].items()}} for rule in sm.rules]
        files[DERIVATIONS] = head + _dump({"rules": rules})
    for stage in order:
        if stage == "redaction":
            stages.append({"type": "redaction", "rules": REDACTION})
        elif stage == "spanmetrics":
            stages.append({"type": "spanmetrics", "rules": DERIVATIONS, **sm.stage,
                           "exemplars": _Flow(sm.stage["exemplars"])})
        else:
            stages.append({"type": "tail_sampling", "policies": POLICIES, **ts.stage})
    head = _comment([f"A recohop hop config imported by {origin}: the pipeline runs the imported stages in "
                     "otelcol's order. Receiver, exporter and telemetry are recohop's defaults (see "
                     "collector-config/recohop.example.yaml). Check: recohop check recohop.yaml"])
    files[HOP] = head + _dump({"pipeline": stages})
    return files


def _policies_summary(path: Path) -> str:
    policies = load_policy_file(path).policies
    return f"{len(policies)} policies: " + ", ".join(f"{p.name} [{p.kind}]" for p in policies)


def _redaction_summary(path: Path) -> str:
    rules = load_rules_file(path)
    return f"{rules.mode}, {len(rules.rules)} rules"


def _derivations_summary(path: Path) -> str:
    rules = load_rules(path, ForbiddenKeys(DEFAULT_FORBIDDEN_KEYS), 2000).rules
    return f"{len(rules)} rules: " + ", ".join(r.name for r in rules)


def _hop_summary(path: Path) -> str:
    cfg = load_config(path)
    quiet = logging.getLogger("recohop.import-check")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    # builtin_default: a pseudonymising rule gets a throwaway key here instead of needing the real one
    ctx = StageContext(registry=CollectorRegistry(), config_file=cfg.source, log=quiet, builtin_default=True)
    pipeline = build_pipeline(cfg.stage_nodes, ctx, sink=lambda _emitted: None)
    return "pipeline: " + " -> ".join(s.name for s in pipeline.stages)


SUMMARIES: dict[str, Callable[[Path], str]] = {POLICIES: _policies_summary, REDACTION: _redaction_summary,
                                               DERIVATIONS: _derivations_summary, HOP: _hop_summary}


def _validate(folder: Path, files: dict[str, str]) -> dict[str, str]:
    """Each file through the loader recohop itself uses, with a one-line summary per file. A failure here is a
    bug in the import, reported as such."""
    return {name: _checked(folder / name, SUMMARIES[name]) for name in files}


def _checked(path: Path, check: Callable[[Path], str]) -> str:
    try:
        return check(path)
    except ConfigError as exc:
        raise RuntimeError(f"recohop policy import wrote a file recohop refuses (a bug in the import): {exc}") from exc


def run_import(config: str | Path, out_dir: str | Path, only: list[str] | None = None,
               force: bool = False) -> ImportResult:
    """Import `config` into `out_dir`. With refusals nothing is written (they are in the result's findings)."""
    result = ImportResult()
    findings = result.findings
    cfg = load_collector_config(config)
    chosen = _select(cfg, only or [], findings)
    if not chosen and not findings.refused:
        raise ConfigError(cfg.file, "service.pipelines", "a tail_sampling or redaction processor or a spanmetrics "
                                                         "connector that a pipeline runs (nothing to import)")
    translated: dict[str, Any] = {}
    for stage, component in chosen.items():
        module = {"tail_sampling": tail_sampling, "redaction": redaction, "spanmetrics": spanmetrics}[stage]
        translated[stage] = module.translate(component, findings)  # type: ignore[attr-defined]
    imported = {c.path for c in chosen.values()}
    result.left_in_otelcol = [c.path for c in cfg.components
                              if c.path not in imported and (c.kind, c.type) not in IMPORTED]
    if findings.refused:
        return result
    order = _order(cfg, chosen, findings)
    files = _render(Path(config).name, chosen, order, translated.get("tail_sampling"), translated.get("redaction"),
                    translated.get("spanmetrics"))
    out = Path(out_dir)
    existing = [out / name for name in files if (out / name).exists()]
    if existing and not force:
        raise ConfigError(existing[0], "", "no file there yet (pass --force to overwrite the import)")
    with tempfile.TemporaryDirectory(prefix="recohop-import-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        summaries = _validate(Path(tmp), files)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(Path(tmp) / name, out / name)
            result.written.append((out / name, summaries[name]))
    return result
