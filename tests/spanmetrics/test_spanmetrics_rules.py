"""The derivation rules file: the shipped rules produce exactly the metrics ARCHITECTURE.md names, the
example loads, and bad rules fail with an error naming the file and the rule."""

from __future__ import annotations

import re

import pytest
from spanmetrics_helpers import DEFAULT_RULES, REPO, build

from processor.cardinality.limits import DEFAULT_FORBIDDEN_KEYS, ForbiddenKeys
from processor.config_node import ConfigError
from processor.spanmetrics.rules import load_rules
from processor.stages.spanmetrics import default_stage_config


def _architecture_metrics() -> dict[str, set[str]]:
    """Derived metric names and labels from the 'Derived metrics' section of ARCHITECTURE.md."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("Derived metrics", 1)[1].split("Hop self-metrics", 1)[0]
    out: dict[str, set[str]] = {}
    previous: set[str] = set()
    for name, labels in re.findall(r"`((?:reco|traces)_\w+)\{([^}]*)\}`", section):
        parts = {x.strip() for x in labels.split(",")}
        out[name] = previous = (parts - {"...", "le"}) | (previous if "..." in parts else set())
    return out


def test_default_rules_match_the_architecture_contract() -> None:
    rules = load_rules(DEFAULT_RULES, ForbiddenKeys(DEFAULT_FORBIDDEN_KEYS), 2000)
    expected = {n: labels for n, labels in _architecture_metrics().items() if n.startswith("reco_")}
    got = {}
    for rule in rules.rules:
        name = rule.name + ("_bucket" if rule.kind == "histogram" else "")
        got[name] = set(rule.label_names)
    assert got == expected


def test_red_names_match_the_architecture_contract() -> None:
    from spanmetrics_helpers import scrape
    from test_spanmetrics_logs import logs_request

    from bench.spanmetrics_workload import make_recos, requests_for

    stage, ctx = build("spanmetrics", {})
    for request in requests_for(make_recos(3)):
        stage.on_traces(request)
    stage.on_logs(logs_request("recommendation-service", [9, 17]))
    m = scrape(ctx.registry)
    for name, labels in _architecture_metrics().items():
        if name.startswith("traces_"):
            base = name.removesuffix("_bucket")
            series = m.series(name if name.endswith("_total") else base + "_count")
            assert series and all(set(s) == labels for s in series)


def test_example_rules_load_and_default_config_builds() -> None:
    rules = load_rules(REPO / "collector-config" / "derivations" / "example.yaml",
                       ForbiddenKeys(DEFAULT_FORBIDDEN_KEYS), 2000)
    assert {r.kind for r in rules.rules} == {"counter", "histogram", "position_split"}
    config = default_stage_config()
    stage, _ = build(config.pop("type"), config)
    assert stage.name == "spanmetrics"


BAD = [
    ("unknown key", "  - {name: a_total, kind: counter, spans: [x], labelz: {}}", "rules[0] 'a_total'", "labelz"),
    ("kind", "  - {name: a_total, kind: gauge, spans: [x]}", "rules[0] 'a_total'.kind", "one of"),
    ("no spans", "  - {name: a_total, kind: counter}", "rules[0] 'a_total'.spans", "span names"),
    ("counter name", "  - {name: clicks, kind: counter, spans: [x]}", "rules[0] 'clicks'.name", "_total"),
    ("histogram name", "  - {name: d_total, kind: histogram, spans: [x]}", "rules[0] 'd_total'.name", "histogram"),
    ("regex", "  - {name: a_total, kind: counter, spans_regex: '(', spans: []}", "spans_regex", "regular"),
    ("two sources", "  - {name: a_total, kind: counter, spans: [x], labels: {p: {attribute: a, span: name}}}",
     "rules[0] 'a_total'.labels.p", "exactly one"),
    ("span field", "  - {name: a_total, kind: counter, spans: [x], labels: {p: {span: duration}}}",
     "labels.p.span", "one of"),
    ("label name", "  - {name: a_total, kind: counter, spans: [x], labels: {le: {span: name}}}",
     "labels.le", "label name"),
    ("buckets", "  - {name: a_total, kind: counter, spans: [x], labels: {p: {attribute: a, buckets: [3, 1]}}}",
     "labels.p.buckets", "increasing"),
    ("split", "  - {name: i_total, kind: position_split, spans: [x], position_buckets: [1, 3]}",
     "rules[1] 'i_total'.count_attribute", "required"),
    ("duplicate", "  - {name: ok_total, kind: counter, spans: [y]}", "rules[1] 'ok_total'.name", "not used"),
    ("hist buckets", "  - {name: d_seconds, kind: histogram, spans: [x], buckets: [0.5, -1]}",
     "rules[1] 'd_seconds'.buckets", "positive"),
]


@pytest.mark.parametrize(("case", "rule", "where", "expect"), BAD, ids=[b[0] for b in BAD])
def test_bad_rules_name_file_and_rule(tmp_path, case: str, rule: str, where: str, expect: str) -> None:
    path = tmp_path / "bad-rules.yaml"
    first = "  - {name: ok_total, kind: counter, spans: [x]}\n" if where.startswith("rules[1]") else ""
    path.write_text("rules:\n" + first + rule + "\n")
    with pytest.raises(ConfigError) as err:
        build("spanmetrics", {"rules": str(path)})
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert where in message and expect in message, message


def test_missing_or_broken_rules_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml.*readable"):
        build("spanmetrics", {"rules": str(tmp_path / "nope.yaml")})
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="broken.yaml.*valid YAML"):
        build("spanmetrics", {"rules": str(broken)})
    empty = tmp_path / "empty.yaml"
    empty.write_text("rules: []\n")
    with pytest.raises(ConfigError, match="empty.yaml: rules: expected at least one rule"):
        build("spanmetrics", {"rules": str(empty)})


def test_stage_config_errors_name_the_hop_config() -> None:
    with pytest.raises(ConfigError, match=r"<test hop.yaml>: pipeline\[0\].bukets"):
        build("spanmetrics", {"bukets": [1]})
    with pytest.raises(ConfigError, match=r"pipeline\[0\].exemplars.per_bucket"):
        build("spanmetrics", {"exemplars": {"per_bucket": 0}})
    with pytest.raises(ConfigError, match=r"pipeline\[0\].rules"):
        build("spanmetrics", {"red": False})
