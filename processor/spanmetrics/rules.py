"""The derivation rules file: which spans make which metric, with which labels.

```yaml
rules:
  - name: reco_clicks_total          # Prometheus name; counters end in _total
    kind: counter                    # counter | histogram | position_split
    help: Clicks on recommended items
    spans: [reco.click]              # exact span names, and/or spans_regex: "^reco\\."
    labels:                          # label name -> one source
      placement: {attribute: reco.placement}
      position_bucket: {attribute: reco.position, buckets: [1, 3, 10]}
      service_name: {resource: service.name}
      stage: {span: name}            # span: name | kind | status_code
    value_attribute: reco.revenue    # counter only: add this numeric attribute instead of 1
    series_limit: 500                # cardinality: overrides the stage's default
    top_k: 20
```
`histogram` observes span duration in seconds (`buckets:` overrides the stage's buckets); `position_split`
reads a count attribute (`count_attribute`, e.g. reco.num_results) and adds the positions 1..n to the
`position_label` series of each `position_buckets` bucket (impressions by position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from processor.cardinality.limits import (
    OVERFLOW_LABEL,
    ForbiddenKeys,
    MetricLimits,
    ValueBuckets,
    check_label_key,
    limits_from_node,
)
from processor.config_node import ConfigError, Node

KINDS = ("counter", "histogram", "position_split")
SPAN_FIELDS = ("name", "kind", "status_code")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = {"le", "quantile", OVERFLOW_LABEL}


@dataclass(frozen=True)
class LabelSpec:
    """Where one label's value comes from: `source` is attribute | resource | span."""

    name: str
    source: str
    key: str
    buckets: ValueBuckets | None = None
    default: str = ""


@dataclass
class Rule:
    name: str
    kind: str
    help: str
    span_names: frozenset[str]
    span_regex: re.Pattern[str] | None
    labels: list[LabelSpec]
    limits: MetricLimits
    where: str  # "file: rules[i] 'name'", for messages
    value_attribute: str | None = None
    count_attribute: str | None = None
    position_label: str = ""
    position_buckets: ValueBuckets | None = None
    buckets: list[float] | None = None

    def matches(self, span_name: str) -> bool:
        return span_name in self.span_names or bool(self.span_regex and self.span_regex.search(span_name))

    def attribute_keys(self) -> set[str]:
        keys = {spec.key for spec in self.labels if spec.source == "attribute"}
        keys.update(k for k in (self.value_attribute, self.count_attribute) if k)
        return keys

    @property
    def label_names(self) -> list[str]:
        names = [spec.name for spec in self.labels]
        return names + [self.position_label] if self.kind == "position_split" else names


@dataclass
class RuleSet:
    file: str
    rules: list[Rule] = field(default_factory=list)


def parse_buckets(node: Node, key: str) -> list[float]:
    """Explicit histogram bounds in seconds: a non-empty strictly increasing list of positive numbers."""
    values = node.list(key)
    ok = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)
    if not ok or any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise node.error(key, "a non-empty, strictly increasing list of positive numbers (seconds)", values)
    return [float(v) for v in values]


def _label(node: Node, label: str, forbidden: ForbiddenKeys) -> LabelSpec:
    if not _LABEL_NAME.match(label) or label in _RESERVED_LABELS or label.startswith("__"):
        raise node.error(label, "a Prometheus label name (letters, digits, _; not le/quantile/reserved)", label)
    spec = node.child(label)
    sources = [s for s in ("attribute", "resource", "span") if spec.has(s)]
    if len(sources) != 1:
        raise ConfigError(spec.file, spec.path, "exactly one of attribute:, resource: or span:")
    source = sources[0]
    key = spec.str(source, choices=SPAN_FIELDS if source == "span" else None)
    if source != "span":
        check_label_key(forbidden, spec, source, key)
    buckets = ValueBuckets.from_node(spec, "buckets") if spec.has("buckets") else None
    if buckets is not None and source != "attribute":
        raise spec.error("buckets", "buckets only on attribute labels")
    result = LabelSpec(label, source, key, buckets, spec.str("default", ""))
    spec.done()
    return result


def parse_rule(node: Node, forbidden: ForbiddenKeys, default_limit: int) -> Rule:
    name = node.str("name")
    if not _METRIC_NAME.match(name):
        raise node.error("name", "a Prometheus metric name", name)
    node.path = f"{node.path} '{name}'"
    kind = node.str("kind", choices=KINDS)
    if kind in ("counter", "position_split") and not name.endswith("_total"):
        raise node.error("name", f"a {kind} name ending in _total", name)
    if kind == "histogram" and name.endswith(("_total", "_bucket", "_count", "_sum")):
        raise node.error("name", "a histogram name without _total/_bucket/_count/_sum (e.g. ..._seconds)", name)
    span_names = frozenset(node.str_list("spans"))
    regex_text = node.opt_str("spans_regex")
    try:
        span_regex = re.compile(regex_text) if regex_text is not None else None
    except re.error as exc:
        raise node.error("spans_regex", f"a valid regular expression ({exc})") from None
    if not span_names and span_regex is None:
        raise node.error("spans", "a list of span names (or spans_regex) this rule applies to")
    labels_node = node.child("labels")
    labels = [_label(labels_node, label, forbidden) for label in list(labels_node.data)]
    labels_node.done()
    rule = Rule(name=name, kind=kind, help=node.str("help", f"Derived from spans by rule {name}"),
                span_names=span_names, span_regex=span_regex, labels=labels,
                limits=limits_from_node(node, default_limit), where=f"{node.file}: {node.path}")
    if rule.limits.allow is not None or rule.limits.buckets:
        raise node.error("allow", "no allow/bucket on a rule (its labels are the allowlist; bucket a label "
                         "with labels.<name>.buckets)")
    if kind == "counter":
        rule.value_attribute = node.opt_str("value_attribute")
    elif kind == "histogram":
        rule.buckets = parse_buckets(node, "buckets") if node.has("buckets") else None
    else:
        rule.count_attribute = node.str("count_attribute")
        rule.position_label = node.str("position_label", "position_bucket")
        rule.position_buckets = ValueBuckets.from_node(node, "position_buckets")
        if rule.position_label in {spec.name for spec in labels}:
            raise node.error("position_label", "a label name not already in labels", rule.position_label)
    node.done()
    return rule


def load_rules(path: Path, forbidden: ForbiddenKeys, default_limit: int) -> RuleSet:
    """Read and check a rules file; every error names the file and the rule (index and name)."""
    top = Node.from_file(path)
    ruleset = RuleSet(str(path))
    seen: dict[str, str] = {}
    for i, item in enumerate(top.list("rules")):
        rule = parse_rule(Node(item, path, f"rules[{i}]"), forbidden, default_limit)
        if rule.name in seen:
            raise ConfigError(path, f"rules[{i}] '{rule.name}'.name",
                              f"a metric name not used by another rule (also {seen[rule.name]})")
        seen[rule.name] = f"rules[{i}]"
        ruleset.rules.append(rule)
    top.done()
    if not ruleset.rules:
        raise top.error("rules", "at least one rule")
    return ruleset
