"""The walk over OTLP messages: key rules on every attribute list, detectors on every remaining string.

Works on the protobuf messages in place (no dicts): attributes are looked up by key once per distinct key
(`RuleSet.lookup` caches), strings go through `Detectors.scan` (prefiltered, cached), and only the fields
that carry text are read. Counts what it did per rule and per detector for the stage's self-metrics; never
keeps or logs a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from processor.redaction.detectors import Detectors
from processor.redaction.pseudonym import Pseudonymiser
from processor.redaction.rules import SUMMARY_ATTRIBUTE, Rule, RuleSet
from processor.stages.base import LogsRequest, MetricsRequest, TracesRequest

DROP = -1  # `keyvalue` result: remove the attribute

MAX_DEPTH = 64  # nested kvlist/array values deeper than this are replaced, not walked


def python_value(value: AnyValue) -> object:
    """The scalar inside an AnyValue (or its serialized bytes for arrays and kvlists)."""
    which = value.WhichOneof("value")
    if which is None:
        return ""
    if which in ("array_value", "kvlist_value"):
        return value.SerializeToString(deterministic=True)
    return getattr(value, which)


class Redactor:
    """Applies one RuleSet; `rule_hits`, `detector_hits` and `spans_touched` accumulate until drained."""

    def __init__(self, rules: RuleSet, pseudonymiser: Pseudonymiser | None) -> None:
        self.rules = rules
        self.detectors = Detectors(rules.detector_kinds)
        self.scan = self.detectors.scan if self.detectors.enabled else None
        self.pseudonymiser = pseudonymiser
        self.summary = rules.summary_attribute
        self.rule_hits: Counter[str] = Counter()
        self.detector_hits: Counter[str] = Counter()
        self.spans_touched = 0

    # ------------------------------------------------------------------ values

    def _text(self, text: str) -> str | None:
        """Redacted text, or None when `text` holds nothing."""
        if self.scan is None:
            return None
        found = self.scan(text)
        if found is None:
            return None
        self.detector_hits.update(found[1])
        return found[0]

    def value(self, value: AnyValue, depth: int = 0) -> int:
        """Detectors on one value (nested lists and maps included); returns how many values changed."""
        which = value.WhichOneof("value")
        if which == "string_value":
            new = self._text(value.string_value)
            if new is None:
                return 0
            value.string_value = new
            return 1
        if which == "kvlist_value" or which == "array_value":
            if depth >= MAX_DEPTH:
                value.string_value = "<nested too deep>"
                return 1
            if which == "kvlist_value":
                return self.attributes(value.kvlist_value.values, depth + 1)
            return sum(self.value(item, depth + 1) for item in value.array_value.values)
        if which == "bytes_value" and self.scan is not None:
            try:
                text = value.bytes_value.decode("utf-8")
            except UnicodeDecodeError:
                return 0
            new = self._text(text)
            if new is None:
                return 0
            value.bytes_value = new.encode("utf-8")
            return 1
        return 0

    def _apply(self, rule: Rule, value: AnyValue) -> None:
        action = rule.action
        if action == "mask":
            value.string_value = rule.mask_with
        elif action == "pseudonymise":
            assert self.pseudonymiser is not None  # build refuses pseudonymise rules without a key
            raw = python_value(value)
            data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
            value.string_value = self.pseudonymiser.pseudonym(data, rule.prefix)
        elif action == "generalise":
            assert rule.generalise is not None
            value.string_value = rule.generalise(python_value(value))

    def keyvalue(self, kv: KeyValue, depth: int = 0) -> int:
        """Key rule, else detectors, on one attribute: values changed, or DROP when it must go."""
        rule = self.rules.lookup(kv.key)
        if rule is None:
            return self.value(kv.value, depth)
        if rule.action == "keep":
            return self.value(kv.value, depth) if rule.scan else 0
        self.rule_hits[rule.name] += 1
        if rule.action == "drop":
            return DROP
        self._apply(rule, kv.value)
        return 1

    def attributes(self, kvs: Iterable[KeyValue], depth: int = 0) -> int:
        """Every attribute of a list (drops removed); returns how many attributes changed."""
        changed = 0
        drops: list[int] | None = None
        for i, kv in enumerate(kvs):
            n = self.keyvalue(kv, depth)
            if n == DROP:
                changed += 1
                if drops is None:
                    drops = []
                drops.append(i)
            else:
                changed += n
        if drops:
            for i in reversed(drops):
                del kvs[i]  # type: ignore[attr-defined]
        return changed

    # ------------------------------------------------------------------ traces

    def span(self, span) -> None:  # opentelemetry.proto.trace.v1.trace_pb2.Span
        changed = self.attributes(span.attributes) if len(span.attributes) else 0
        self.finish_span(span, changed + self.span_extras(span))

    def span_extras(self, span) -> int:
        """Everything of a span but its attributes: name, status message, events, links."""
        changed = 0
        new = self._text(span.name)
        if new is not None:
            span.name = new
            changed += 1
        if span.status.message:
            new = self._text(span.status.message)
            if new is not None:
                span.status.message = new
                changed += 1
        for event in span.events:
            new = self._text(event.name)
            if new is not None:
                event.name = new
                changed += 1
            changed += self.attributes(event.attributes)
        for link in span.links:
            changed += self.attributes(link.attributes)
        return changed

    def finish_span(self, span, changed: int) -> None:
        """Count a changed span and add the summary attribute (last, after every other change)."""
        if changed:
            self.spans_touched += 1
            if self.summary:
                summary = span.attributes.add(key=SUMMARY_ATTRIBUTE)
                summary.value.int_value = changed

    def traces(self, request: TracesRequest) -> None:
        """The slow path: every span walked through the message (fastpath.py gives the same result)."""
        for rs in request.resource_spans:
            self.attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                self.attributes(ss.scope.attributes)
                for span in ss.spans:
                    self.span(span)

    # ------------------------------------------------------------------ metrics and logs

    def metrics(self, request: MetricsRequest) -> None:
        for rm in request.resource_metrics:
            self.attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                self.attributes(sm.scope.attributes)
                for metric in sm.metrics:
                    if len(metric.metadata):
                        self.attributes(metric.metadata)
                    field = metric.WhichOneof("data")
                    if field is None:
                        continue
                    for point in getattr(metric, field).data_points:
                        if len(point.attributes):
                            self.attributes(point.attributes)
                        for exemplar in getattr(point, "exemplars", ()):
                            self.attributes(exemplar.filtered_attributes)

    def logs(self, request: LogsRequest) -> None:
        for rl in request.resource_logs:
            self.attributes(rl.resource.attributes)
            for sl in rl.scope_logs:
                self.attributes(sl.scope.attributes)
                for record in sl.log_records:
                    if len(record.attributes):
                        self.attributes(record.attributes)
                    if record.HasField("body"):
                        self.value(record.body)
                    if record.event_name:
                        new = self._text(record.event_name)
                        if new is not None:
                            record.event_name = new
