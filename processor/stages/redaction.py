"""Redaction stage: PII pseudonymised, generalised or removed before any later stage (or byte) sees it.

Hop config: `{type: redaction, rules: path/to/rules.yaml}` (relative to the hop config file), or the rules
keys inline (`rules: [...]`, `mode`, `detectors`, `pseudonym`, ...; schema in processor/redaction/rules.py).
Optional `name` (default `redaction`). Audit goes to self-metrics as counts, never values.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily

from processor.config_node import Node
from processor.redaction.native import NativeTraces
from processor.redaction.pseudonym import Pseudonymiser, load_key
from processor.redaction.redactor import Redactor
from processor.redaction.rules import RULES_KEYS, RuleSet, default_stage_node, load_rules_file, parse_rules
from processor.stages.base import LogsRequest, MetricsRequest, Stage, StageContext, TracesRequest

__all__ = ["RedactionStage", "build", "default_stage_node", "load_ruleset"]


def _counter(registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
    """The counter, shared when a second redaction stage registers the same name."""
    try:
        return Counter(name, doc, labels, registry=registry)
    except ValueError:
        return registry._names_to_collectors[name]  # type: ignore[attr-defined,return-value]


class UnreadableValues:
    """`recohop_redaction_unreadable_values_total{rule}`: values a generalising rule could not read (each
    became the kind's tag instead of refusing the request), read from the rules at scrape time."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.generalising = [rule.name for _, rule in rules.rules if rule.generalise is not None]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("recohop_redaction_unreadable_values",
                                     "Values a generalising rule could not read, replaced by the kind's tag", labels=["rule"])
        counts = self.rules.unreadable_values()
        for name in dict.fromkeys([*self.generalising, *counts]):
            family.add_metric([name], counts.get(name, 0))
        yield family


class RedactionStage(Stage):
    name = "redaction"
    mutates = True
    # Values and attributes change, spans are never added or removed: the receiver's span count travels on.
    keeps_span_count = True

    def __init__(self, redactor: Redactor, registry: CollectorRegistry, name: str = "redaction") -> None:
        self.name = name
        self.redactor = redactor
        rules = redactor.rules
        # Two tiers: the C pass over serialized requests when built (then the hop hands this stage bytes), and
        # the Python message walk (`Redactor.traces`), the fallback for bytes the scanner does not handle and
        # when it is not built, and the reference the differential tests compare the scanner against.
        self.native = NativeTraces.load(redactor)
        self.takes_trace_bytes = self.native is not None
        self._rule_hits = _counter(registry, "recohop_redaction_rule_hits", "Attributes acted on, per rule",
                                   ("rule",))
        self._detector_hits = _counter(registry, "recohop_redaction_detector_hits",
                                       "Values replaced by a detector, per detector", ("detector",))
        self._spans_touched = _counter(registry, "recohop_redaction_spans_touched",
                                       "Spans with at least one redacted value", ())
        # Pre-create label sets so the audit series exist (at 0) before the first hit; the children are kept,
        # since `labels()` costs more than the `inc` a request makes of it.
        self._rule_children: dict[str, Counter] = {}
        self._detector_children: dict[str, Counter] = {}
        for _, rule in rules.rules:
            if rule.action != "keep":
                self._rule_child(rule.name)
        if rules.otherwise is not None:
            self._rule_child(rules.otherwise.name)
        for kind in redactor.detectors.kinds:
            self._detector_child(kind)
        registry.register(UnreadableValues(rules))

    def on_traces(self, request: TracesRequest) -> list[TracesRequest]:
        """Redacts `request` in place (through the byte path when the scanner is built)."""
        if self.native is None:
            self.redactor.traces(request)
            self._publish()
            return [request]
        raw = request.SerializeToString()
        (out,) = self.on_trace_bytes(raw)
        if out is not raw:
            request.ParseFromString(out)
        return [request]

    def prepare_trace_bytes(self, raw: bytes) -> None:
        """The scanner's walk, ahead of the stage's lock (`Stage.prepare_trace_bytes`)."""
        if self.native is not None:
            self.native.prepare(raw)

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        """The hot path: `raw` itself when nothing needed redacting, else the redacted request's bytes."""
        out = self.native.redact(raw) if self.native is not None else None
        if out is None:
            request = TracesRequest.FromString(raw)
            self.redactor.traces(request)
            data = request.SerializeToString()
            out = raw if data == raw else data
        self._publish()
        return [out]

    def on_metrics(self, request: MetricsRequest) -> list[MetricsRequest]:
        self.redactor.metrics(request)
        self._publish()
        return [request]

    def on_logs(self, request: LogsRequest) -> list[LogsRequest]:
        self.redactor.logs(request)
        self._publish()
        return [request]

    def _publish(self) -> None:
        r = self.redactor
        if r.rule_hits:
            for rule, n in r.rule_hits.items():
                self._rule_child(rule).inc(n)
            r.rule_hits.clear()
        if r.detector_hits:
            for kind, n in r.detector_hits.items():
                self._detector_child(kind).inc(n)
            r.detector_hits.clear()
        if r.spans_touched:
            self._spans_touched.inc(r.spans_touched)
            r.spans_touched = 0

    def _rule_child(self, rule: str) -> Counter:
        return _child(self._rule_children, self._rule_hits, rule)

    def _detector_child(self, kind: str) -> Counter:
        return _child(self._detector_children, self._detector_hits, kind)


def _child(children: dict[str, Counter], family: Counter, label: str) -> Counter:
    child = children.get(label)
    if child is None:
        child = children[label] = family.labels(label)
    return child


def load_ruleset(node: Node) -> RuleSet:
    """The rules of a stage node: from the file named by `rules:` or inline."""
    value = node.raw("rules")
    if isinstance(value, str):
        inline = [k for k in RULES_KEYS if k != "rules" and node.has(k)]
        if inline:
            raise node.error(inline[0], "no inline rule settings when `rules:` names a file (move them into it)")
        path = node.path_value("rules")
        assert path is not None
        return load_rules_file(path)
    return parse_rules(node)


def make_redactor(rules: RuleSet, ctx: StageContext) -> Redactor:
    pseudonymiser = None
    if rules.pseudonymising_rule is not None:
        key = load_key(rules.key_source, rules.pseudonymising_rule, ctx.builtin_default, ctx.log)
        pseudonymiser = Pseudonymiser(key, rules.pseudonym_length)
    return Redactor(rules, pseudonymiser)


def build(node: Node, ctx: StageContext) -> Stage:
    name = node.str("name", "redaction")
    rules = load_ruleset(node)
    return RedactionStage(make_redactor(rules, ctx), ctx.registry, name)
