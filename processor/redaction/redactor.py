"""The walk over OTLP messages: key rules on every attribute list, detectors on every remaining string.

Works on the protobuf messages in place (no dicts): attributes are looked up by key once per distinct key
(`RuleSet.lookup` caches), strings go through `Detectors.scan` (prefiltered, cached), and only the fields
that carry text are read. Counts what it did per rule and per detector for the stage's self-metrics; never
keeps or logs a value.

Beyond values: attribute keys, span names, trace_state (spans and links), scope name and version, metric name,
description and unit, bytes values, and integers or doubles of 13+ digits (a card number sent as a number) go
through the detectors too. Identity scrubbing: the raw value of every attribute a rule pseudonymises, masks or
drops is remembered per resource and per span (its events and links included) and per log record, and any other
occurrence of it there (a log body "user-12345 clicked", a span name, a URL path) is replaced by its pseudonym
(or the rule's mask text), so the output never shows a pseudonym next to the raw id. The own identities of a
span, log record or metric data point (on the point or its exemplars) are scrubbed from its resource and scope too.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from processor.redaction.detectors import Detectors
from processor.redaction.pseudonym import Pseudonymiser
from processor.redaction.rules import SUMMARY_ATTRIBUTE, Rule, RuleSet
from processor.stages.base import LogsRequest, MetricsRequest, TracesRequest

DROP = -1  # `keyvalue` result: remove the attribute

MAX_DEPTH = 64  # nested kvlist/array values deeper than this are replaced, not walked
BIG_NUMBER = 10**12  # ints/doubles this large (13+ digits) are scanned as text (_redact.c: big_number)
IDENTITY_MIN = 3  # shorter raw identity values are not scrubbed from text (too many innocent matches)
IDENTITY_ACTIONS = frozenset(("pseudonymise", "mask", "drop"))

Identities = dict[str, str]  # raw value -> what replaces it in text


def scrubber(ids: Identities) -> Callable[[str], tuple[str, int]]:
    """Replace each raw identity value where it stands as a token of its own (not inside a longer
    alphanumeric run: `user-12345` yes, `123456` no), longest first."""
    alternatives = "|".join(re.escape(raw) for raw in sorted(ids, key=len, reverse=True))
    pattern = re.compile(f"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])")

    def scrub(text: str) -> tuple[str, int]:
        return pattern.subn(lambda m: ids[m.group()], text)

    return scrub


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
        self.detectors = Detectors(rules.detector_kinds, rules.blocked_values, rules.phone_regions, rules.decode)
        self.scan = self.detectors.scan if self.detectors.enabled else None
        self.pseudonymiser = pseudonymiser
        self.summary = rules.summary_attribute
        self.rule_hits: Counter[str] = Counter()
        self.detector_hits: Counter[str] = Counter()
        self.spans_touched = 0
        self._ids: Identities | None = None  # collecting identities (per resource / span / log record)

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
        if (which == "int_value" or which == "double_value") and self.scan is not None:
            number = getattr(value, which)
            if not -BIG_NUMBER < number < BIG_NUMBER:
                if which == "double_value":
                    if not float(number).is_integer():
                        return 0
                    number = int(number)
                new = self._text(str(number))
                if new is None:
                    return 0
                value.string_value = new
                return 1
            return 0
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
        """Key rule, else detectors, on one attribute: values changed, or DROP when it must go. The key itself
        goes through the detectors too (its rule is the raw key's)."""
        rule = self.rules.lookup(kv.key)
        renamed = 0
        if self.scan is not None:
            new_key = self._text(kv.key)
            if new_key is not None:
                kv.key = new_key
                renamed = 1
        if rule is None:
            return renamed + self.value(kv.value, depth)
        if rule.action == "keep":
            return renamed + (self.value(kv.value, depth) if rule.scan else 0)
        self.rule_hits[rule.name] += 1
        identity = self._ids is not None and depth == 0 and rule.action in IDENTITY_ACTIONS
        raw = self._identity(kv.value) if identity else None
        if rule.action == "drop":
            if raw is not None:
                self._ids[raw] = rule.mask_with  # type: ignore[index]
            return DROP
        self._apply(rule, kv.value)
        if raw is not None:
            self._ids[raw] = kv.value.string_value if rule.action == "pseudonymise" else rule.mask_with  # type: ignore[index]
        return renamed + 1

    @staticmethod
    def _identity(value: AnyValue) -> str | None:
        """The raw text of a value a rule acts on, when it could recur in free text (str or int, 3+ chars)."""
        which = value.WhichOneof("value")
        if which == "string_value":
            text = value.string_value
        elif which == "int_value":
            text = str(value.int_value)
        else:
            return None
        return text if len(text) >= IDENTITY_MIN else None

    # ------------------------------------------------------------------ identity scrubbing

    def _scrub_value(self, value: AnyValue, scrub: Callable[[str], tuple[str, int]], depth: int = 0) -> int:
        which = value.WhichOneof("value")
        if which == "string_value":
            new, n = scrub(value.string_value)
            if n:
                value.string_value = new
                return 1
            return 0
        if depth >= MAX_DEPTH:
            return 0
        if which == "kvlist_value":
            return self._scrub_attributes(value.kvlist_value.values, scrub, depth + 1)
        if which == "array_value":
            return sum(self._scrub_value(item, scrub, depth + 1) for item in value.array_value.values)
        return 0

    def _scrub_attributes(self, kvs: Iterable[KeyValue], scrub: Callable[[str], tuple[str, int]],
                          depth: int = 0) -> int:
        return sum(self._scrub_value(kv.value, scrub, depth) for kv in kvs)

    @staticmethod
    def _scrub_field(message, name: str, scrub: Callable[[str], tuple[str, int]]) -> int:
        text = getattr(message, name)
        if not text:
            return 0
        new, n = scrub(text)
        if n:
            setattr(message, name, new)
            return 1
        return 0

    def _scrub_span(self, span, ids: Identities) -> int:
        """Every text of a span (attributes, name, trace_state, status, events, links) without the raw ids."""
        scrub = scrubber(ids)
        changed = self._scrub_attributes(span.attributes, scrub)
        changed += self._scrub_field(span, "name", scrub) + self._scrub_field(span, "trace_state", scrub)
        changed += self._scrub_field(span.status, "message", scrub)
        for event in span.events:
            changed += self._scrub_field(event, "name", scrub) + self._scrub_attributes(event.attributes, scrub)
        for link in span.links:
            changed += self._scrub_field(link, "trace_state", scrub) + self._scrub_attributes(link.attributes, scrub)
        return changed

    def _scrub_scope(self, scope, scrub: Callable[[str], tuple[str, int]]) -> None:
        self._scrub_field(scope, "name", scrub)
        self._scrub_field(scope, "version", scrub)
        self._scrub_attributes(scope.attributes, scrub)

    def _scrub_own(self, ids: Identities, resource_ids: Identities, resource, scope) -> None:
        """The identities of one span, log record or data point that are not its resource's (`user.id` on the
        span) leave its resource and scope too: a raw id there would map the pseudonym back."""
        own = {raw: new for raw, new in ids.items() if raw not in resource_ids}
        if own:
            scrub = scrubber(own)
            self._scrub_attributes(resource.attributes, scrub)
            self._scrub_scope(scope, scrub)

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

    def span(self, span) -> Identities:  # opentelemetry.proto.trace.v1.trace_pb2.Span
        """Redacts one span; its identities (the resource's and its own)."""
        outer = self._ids
        self._ids = ids = {} if outer is None else dict(outer)  # the resource's identities, plus the span's own
        changed = self.attributes(span.attributes) if len(span.attributes) else 0
        changed += self.span_extras(span)
        if ids:
            changed += self._scrub_span(span, ids)
        self._ids = outer
        self.finish_span(span, changed)
        return ids

    def _text_field(self, message, name: str) -> int:
        """Detectors on one string field of a message: 1 when it changed."""
        text = getattr(message, name)
        if not text:
            return 0
        new = self._text(text)
        if new is None:
            return 0
        setattr(message, name, new)
        return 1

    def scope(self, scope) -> None:
        """An InstrumentationScope: name, version and attributes."""
        self._text_field(scope, "name")
        self._text_field(scope, "version")
        self.attributes(scope.attributes)

    def span_extras(self, span) -> int:
        """Everything of a span but its attributes: name, trace_state, status message, events, links."""
        changed = 0
        new = self._text(span.name)
        if new is not None:
            span.name = new
            changed += 1
        changed += self._text_field(span, "trace_state")
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
            changed += self._text_field(link, "trace_state")
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
        """Every span walked through the message: the fallback and reference of the C scanner (native.py)."""
        for rs in request.resource_spans:
            ids = self._resource(rs.resource, [ss.scope for ss in rs.scope_spans])
            self._ids = ids or None
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self._scrub_own(self.span(span), ids, rs.resource, ss.scope)
            self._ids = None

    def _resource(self, resource, scopes: list) -> Identities:
        """Resource and scopes (identities collected, then scrubbed from their own texts); the identities."""
        self._ids = ids = {}
        self.attributes(resource.attributes)
        for scope in scopes:
            self.scope(scope)
        self._ids = None
        if ids:
            scrub = scrubber(ids)
            self._scrub_attributes(resource.attributes, scrub)
            for scope in scopes:
                self._scrub_scope(scope, scrub)
        return ids

    # ------------------------------------------------------------------ metrics and logs

    def metrics(self, request: MetricsRequest) -> None:
        for rm in request.resource_metrics:
            scopes = [sm.scope for sm in rm.scope_metrics]
            resource_ids = self._resource(rm.resource, scopes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self._text_field(metric, "name")
                    self._text_field(metric, "description")
                    self._text_field(metric, "unit")
                    if len(metric.metadata):
                        self.attributes(metric.metadata)
                    field = metric.WhichOneof("data")
                    if field is None:
                        continue
                    for point in getattr(metric, field).data_points:
                        self._data_point(point, resource_ids, rm.resource, sm.scope)

    def _data_point(self, point, resource_ids: Identities, resource, scope) -> None:
        """One data point: its attributes and its exemplars' filtered attributes, then identity scrubbing: the
        resource's identities and its own (user.id on the point or an exemplar) leave its attributes and
        exemplars, and its own leave the resource and scope too (they would map the pseudonym back)."""
        exemplars = getattr(point, "exemplars", ())
        self._ids = dict(resource_ids)
        if len(point.attributes):
            self.attributes(point.attributes)
        for exemplar in exemplars:
            if len(exemplar.filtered_attributes):
                self.attributes(exemplar.filtered_attributes)
        ids, self._ids = self._ids, None
        if not ids:
            return
        scrub = scrubber(ids)
        self._scrub_attributes(point.attributes, scrub)
        for exemplar in exemplars:
            self._scrub_attributes(exemplar.filtered_attributes, scrub)
        self._scrub_own(ids, resource_ids, resource, scope)

    def logs(self, request: LogsRequest) -> None:
        for rl in request.resource_logs:
            resource_ids = self._resource(rl.resource, [sl.scope for sl in rl.scope_logs])
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    self._ids = dict(resource_ids)
                    if len(record.attributes):
                        self.attributes(record.attributes)
                    if record.HasField("body"):
                        self.value(record.body)
                    self._text_field(record, "event_name")
                    ids, self._ids = self._ids, None
                    if ids:
                        scrub = scrubber(ids)
                        self._scrub_attributes(record.attributes, scrub)
                        if record.HasField("body"):
                            self._scrub_value(record.body, scrub)
                        self._scrub_field(record, "event_name", scrub)
                        self._scrub_own(ids, resource_ids, rl.resource, sl.scope)
