"""`recohop policy import`: otelcol tail_sampling policies -> recohop policies, what is refused and why, the
stage settings, and the command's behaviour (nothing written on a refusal, --only, --force, stage order).
The live tests (test_migrate_otelcol_*.py) check the same translations against the real collector."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from migrate_peers import run_cli

from processor.config_node import Node
from processor.migrate.ottl import OttlRefused, span_condition_policies
from processor.migrate.source import go_duration_ns
from processor.migrate.tail_sampling import latency_threshold
from processor.sampling.policies import latency


def collector(policies: str, settings: str = "", extra: str = "") -> str:
    """A collector config with one tail_sampling processor in a traces pipeline."""
    return (f"processors:\n  tail_sampling:\n{textwrap.indent(settings, '    ')}    policies:\n"
            f"{textwrap.indent(policies, '      ')}{extra}"
            "service:\n  pipelines:\n    traces: {receivers: [otlp], processors: [tail_sampling], "
            "exporters: [otlp]}\n")


def run_import(tmp_path: Path, config: str, *args: str) -> tuple[int, str, Path]:
    source = tmp_path / "otelcol.yaml"
    source.write_text(config)
    out = tmp_path / "out"
    code, text = run_cli("policy", "import", str(source), "--out", str(out), *args)
    return code, text, out


def imported_policies(tmp_path: Path, policies: str, settings: str = "") -> list[dict[str, Any]]:
    code, text, out = run_import(tmp_path, collector(policies, settings))
    assert code == 0, text
    return yaml.safe_load((out / "policies.yaml").read_text())["policies"]


TRANSLATIONS = [
    ("{name: e, type: status_code, status_code: {status_codes: [ERROR]}}",
     [{"name": "e", "type": "status_code", "exception_events": False}]),
    ("{name: f, type: boolean_attribute, boolean_attribute: {key: reco.fallback, value: true}}",
     [{"name": "f", "type": "attribute", "key": "reco.fallback", "value": True}]),
    ("{name: f, type: boolean_attribute, boolean_attribute: {key: k, value: true, invert_match: true}}",
     [{"name": "f", "type": "not", "policy": {"type": "attribute", "key": "k", "value": True}}]),
    ("{name: s, type: string_attribute, string_attribute: {key: p, values: [email]}}",
     [{"name": "s", "type": "attribute", "key": "p", "value": "email"}]),
    ("{name: s, type: string_attribute, string_attribute: {key: p, values: [a, '', b]}}",
     [{"name": "s", "type": "attribute", "key": "p", "values": ["a", "b"]}]),
    ("{name: s, type: string_attribute, string_attribute: {key: p, values: ['^a', b$], enabled_regex_matching: true}}",
     [{"name": "s", "type": "attribute", "key": "p", "regex": "(?:^a)|(?:b$)"}]),
    ("{name: n, type: numeric_attribute, numeric_attribute: {key: n, min_value: 5}}",
     [{"name": "n", "type": "attribute", "key": "n", "min": 5}]),
    ("{name: n, type: numeric_attribute, numeric_attribute: {key: n, min_value: -3, max_value: 7, invert_match: true}}",
     [{"name": "n", "type": "not", "policy": {"type": "attribute", "key": "n", "min": -3, "max": 7}}]),
    ("{name: l, type: latency, latency: {threshold_ms: 500}}",
     [{"name": "l", "type": "latency", "threshold": "500.999999ms"}]),
    ("{name: l, type: latency, latency: {threshold_ms: 100, upper_threshold_ms: 300}}",
     [{"name": "l", "type": "and", "policies": [{"type": "latency", "threshold": "100.999999ms"}, {
         "type": "not", "policy": {"type": "latency", "threshold": "300.999999ms"}}]}]),
    ("{name: c, type: span_count, span_count: {min_spans: 0, max_spans: 9}}",
     [{"name": "c", "type": "span_count", "min": 1, "max": 9}]),
    ("{name: a, type: always_sample}", [{"name": "a", "type": "always"}]),
    ("{name: p, type: probabilistic, probabilistic: {sampling_percentage: 150, hash_salt: s}}",
     [{"name": "p", "type": "probabilistic", "percentage": 100}]),
    ("{name: p, type: probabilistic, probabilistic: {sampling_percentage: 0.5}}",
     [{"name": "p", "type": "probabilistic", "percentage": 0.5}]),
    ("{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 35}}",
     [{"name": "r", "type": "rate_limit", "spans_per_second": 35}]),
    ("""{name: o, type: ottl_condition, ottl_condition: {span: ['attributes["k"] == "v" or status.code == 2']}}""",
     [{"name": "o", "type": "attribute", "key": "k", "value": "v", "scope": "span"},
      {"name": "o.2", "type": "status_code", "exception_events": False}]),
    ("{name: n, type: not, not: {not_sub_policy: {name: x, type: ottl_condition, ottl_condition: "
     """{span: ['attributes["a"] == 1', 'attributes["b"] == 2']}}}}""",
     [{"name": "n", "type": "and", "policies": [
         {"type": "not", "policy": {"type": "attribute", "key": "a", "value": 1, "scope": "span"}},
         {"type": "not", "policy": {"type": "attribute", "key": "b", "value": 2, "scope": "span"}}]}]),
    ("{name: a, type: and, and: {and_sub_policy: [{name: x, type: probabilistic, probabilistic: "
     """{sampling_percentage: 10}}, {name: y, type: ottl_condition, ottl_condition: {span: ['attributes["a"] == 1 or """
     """attributes["b"] == 2']}}]}}""",
     [{"name": "a", "type": "and", "policies": [{"type": "probabilistic", "percentage": 10},
                                                {"type": "attribute", "key": "a", "value": 1, "scope": "span"}]},
      {"name": "a.2", "type": "and", "policies": [{"type": "probabilistic", "percentage": 10},
                                                  {"type": "attribute", "key": "b", "value": 2, "scope": "span"}]}]),
    ("{name: d, type: drop, drop: {drop_sub_policy: [{name: x, type: string_attribute, string_attribute: "
     "{key: url.path, values: [/healthz]}}, {name: y, type: not, not: {not_sub_policy: {name: z, type: "
     "status_code, status_code: {status_codes: [ERROR]}}}}]}}",
     [{"name": "d", "type": "drop", "policy": {"type": "and", "policies": [
         {"type": "attribute", "key": "url.path", "value": "/healthz"},
         {"type": "not", "policy": {"type": "status_code", "exception_events": False}}]}}]),
    ("{name: b, type: composite, composite: {max_total_spans_per_second: 100, composite_sub_policy: ["
     "{name: x, type: status_code, status_code: {status_codes: [ERROR]}}, {name: y, type: always_sample}, "
     "{name: z, type: always_sample}], rate_allocation: [{policy: x, percent: 60}, {policy: y, percent: 0}]}}",
     [{"name": "b/x", "type": "and", "policies": [{"type": "status_code", "exception_events": False},
                                                  {"type": "rate_limit", "spans_per_second": 60}]},
      {"name": "b/y", "type": "and", "policies": [
          {"type": "not", "policy": {"type": "status_code", "exception_events": False}}, {"type": "always"},
          {"type": "rate_limit", "spans_per_second": 100 / 3}]}]),
]


@pytest.mark.parametrize(("otelcol", "expected"), TRANSLATIONS, ids=[t[0][7:30] for t in TRANSLATIONS])
def test_policy_translation(tmp_path: Path, otelcol: str, expected: list[dict[str, Any]]) -> None:
    assert imported_policies(tmp_path, f"- {otelcol}\n") == expected


REFUSALS = [
    ("{name: t, type: trace_state, trace_state: {key: k, values: [v]}}", "policies[0] (t).type",
     "no policy on the W3C tracestate"),
    ("{name: t, type: trace_flags}", "policies[0] (t).type", "sampled bit"),
    ("{name: t, type: bytes_limiting, bytes_limiting: {bytes_per_second: 10}}", "(t).type", "not bytes"),
    ("{name: s, type: status_code, status_code: {status_codes: [ERROR, OK]}}", "(s).status_code.status_codes",
     "ERROR only (OK would need"),
    ("{name: n, type: numeric_attribute, numeric_attribute: {key: n}}", "(n).numeric_attribute",
     "neither min_value nor max_value"),
    ("{name: s, type: string_attribute, string_attribute: {key: k, values: ['']}}", "(s).string_attribute.values",
     "can never match"),
    ("{name: s, type: string_attribute, string_attribute: {key: k, values: ['\\pL+'], enabled_regex_matching: true}}",
     "(s).string_attribute.values[0]", "Python re"),
    ("{name: c, type: span_count, span_count: {min_spans: 5, max_spans: 2}}", "(c).span_count.max_spans",
     "can never match"),
    ("""{name: o, type: ottl_condition, ottl_condition: {span: ['attributes["a"] == 1 and attributes["b"] == 2']}}""",
     "(o).ottl_condition.span[0]", "`and` inside one condition holds on a single span"),
    ("""{name: o, type: ottl_condition, ottl_condition: {span: ['not attributes["a"] == 1']}}""",
     "(o).ottl_condition.span[0]", "`not` inside one condition"),
    ("""{name: o, type: ottl_condition, ottl_condition: {span: ['attributes["a"] > 1']}}""",
     "(o).ottl_condition.span[0]", "inclusive"),
    ("""{name: o, type: ottl_condition, ottl_condition: {span: ['attributes["a"] != "x"']}}""",
     "(o).ottl_condition.span[0]", "!="),
    ("""{name: o, type: ottl_condition, ottl_condition: {span: ['name == "x"']}}""",
     "(o).ottl_condition.span[0]", "name has no recohop policy"),
    ("""{name: o, type: ottl_condition, ottl_condition: {spanevent: ['name == "exception"']}}""",
     "(o).ottl_condition.spanevent", "no policy on span events"),
    ("{name: l, type: latency, latency: {threshold_ms: 5, lower: 1}}", "(l).latency.lower",
     "not a setting of otelcol v0.158's tail_sampling latency policy"),
    ("{name: x, type: my_extension, my_extension: {a: 1}}", "(x).type", "not a policy type otelcol v0.158 accepts"),
    ("{name: p, type: probabilistic, probabilistic: {sampling_percentage: '${env:PCT}'}}",
     "(p).probabilistic.sampling_percentage", "${...} reference"),
    ("{name: a, type: and, and: {and_sub_policy: [{name: x, type: drop}]}}", "and.and_sub_policy[0].type",
     "accepts here"),
    ("{name: b, type: composite, composite: {max_total_spans_per_second: 10, composite_sub_policy: [{name: x, "
     """type: ottl_condition, ottl_condition: {span: ['attributes["a"] == 1', 'attributes["b"] == 1']}}], """
     "rate_allocation: [{policy: x, percent: 50}]}}", "composite.composite_sub_policy[0]",
     "one rate budget shared"),
]


@pytest.mark.parametrize(("otelcol", "where", "why"), REFUSALS, ids=[r[0][7:30] for r in REFUSALS])
def test_refusal_names_the_key_path_and_why(tmp_path: Path, otelcol: str, where: str, why: str) -> None:
    code, text, out = run_import(tmp_path, collector(f"- {otelcol}\n- {{name: keep, type: always_sample}}\n"))
    assert code == 2
    assert "not imported, nothing written (1 without a recohop equivalent)" in text
    line = next(line for line in text.splitlines() if line.startswith("  processors."))
    assert f"processors.tail_sampling.policies[0] {where}" in line or f"processors.tail_sampling.{where}" in line \
        or where in line, line
    assert why in line, line
    assert not out.exists()


@pytest.mark.parametrize(("setting", "why"), [
    ("block_on_overflow: true", "never blocks its receiver"),
    ("drop_pending_traces_on_shutdown: true", "every buffered trace on shutdown"),
    ("sampling_strategy: span-ingest", "whole traces only"),
    ("maximum_trace_size_bytes: 1000", "never drops a large trace undecided"),
    ("tail_storage: file_storage", "write-ahead log"),
    ("num_trace: 5", "not a setting of otelcol v0.158's tail_sampling processor"),
])
def test_stage_settings_without_equivalent_are_refused(tmp_path: Path, setting: str, why: str) -> None:
    code, text, _ = run_import(tmp_path, collector("- {name: a, type: always_sample}\n", setting + "\n"))
    assert code == 2
    line = next(line for line in text.splitlines() if f"processors.tail_sampling.{setting.split(':')[0]}: " in line)
    assert why in line, line


def test_every_refusal_is_listed_at_once(tmp_path: Path) -> None:
    code, text, _ = run_import(tmp_path, collector(
        "- {name: t, type: trace_state, trace_state: {key: k}}\n"
        "- {name: f, type: trace_flags}\n", "block_on_overflow: true\n"))
    assert code == 2
    assert "(3 without a recohop equivalent)" in text
    assert "policies[0] (t)" in text and "policies[1] (f)" in text and "block_on_overflow" in text


def test_stage_settings_go_to_the_hop_config(tmp_path: Path) -> None:
    code, text, out = run_import(tmp_path, collector(
        "- {name: a, type: always_sample}\n",
        "decision_wait: 5s\ndecision_wait_after_root_received: 1500ms\nnum_traces: 1234\n"
        "decision_cache: {sampled_cache_size: 1000, non_sampled_cache_size: 500}\nexpected_new_traces_per_sec: 10\n"))
    assert code == 0, text
    stage = yaml.safe_load((out / "recohop.yaml").read_text())["pipeline"][0]
    assert stage == {"type": "tail_sampling", "policies": "policies.yaml", "decision_wait": "5s",
                     "root_grace": "1500ms", "max_traces": 1234, "decision_cache_size": 1500}
    assert "expected_new_traces_per_sec: an allocation hint" in text


def test_defaults_are_otelcols(tmp_path: Path) -> None:
    _, _, out = run_import(tmp_path, collector("- {name: a, type: always_sample}\n"))
    stage = yaml.safe_load((out / "recohop.yaml").read_text())["pipeline"][0]
    assert (stage["decision_wait"], stage["root_grace"], stage["max_traces"]) == ("30s", "30s", 50000)


def test_names_are_made_unique_and_noted(tmp_path: Path) -> None:
    code, text, out = run_import(tmp_path, collector(
        "- {name: a, type: always_sample}\n- {name: a, type: always_sample}\n- {name: none, type: always_sample}\n"
        "- {type: always_sample}\n"))
    assert code == 0, text
    names = [p["name"] for p in yaml.safe_load((out / "policies.yaml").read_text())["policies"]]
    assert names == ["a", "a_", "none_", "policy-3"]
    assert "written as 'a_'" in text and "written as 'none_'" in text and "no name: written as 'policy-3'" in text


def test_files_carry_provenance_and_notes_and_pass_policy_check(tmp_path: Path) -> None:
    code, text, out = run_import(tmp_path, collector(
        "- {name: slow, type: latency, latency: {threshold_ms: 500}}\n"
        "- {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 1, hash_salt: pepper}}\n"))
    assert code == 0, text
    written = (out / "policies.yaml").read_text()
    assert "# from processors.tail_sampling.policies[0] (slow)" in written
    assert "whole milliseconds" in written
    comments = " ".join(line.strip().lstrip("#").strip() for line in written.splitlines() if "#" in line)
    assert "FNV-1a and a salt ('pepper')" in comments and "FNV-1a and a salt ('pepper')" in text
    code, checked = run_cli("policy", "check", str(out / "policies.yaml"))
    assert code == 0 and "ok (2 policies: slow [latency], baseline [probabilistic])" in checked
    code, checked = run_cli("check", str(out / "recohop.yaml"))
    assert code == 0 and "ok (tail_sampling;" in checked


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    config = collector("- {name: a, type: always_sample}\n")
    assert run_import(tmp_path, config)[0] == 0
    (tmp_path / "out" / "policies.yaml").write_text("# edited by hand\n")
    code, text, out = run_import(tmp_path, config)
    assert code == 2 and "pass --force" in text
    assert (out / "policies.yaml").read_text() == "# edited by hand\n"
    code, text, out = run_import(tmp_path, config, "--force")
    assert code == 0, text
    assert "name: a" in (out / "policies.yaml").read_text()


def test_components_no_pipeline_runs_are_not_imported(tmp_path: Path) -> None:
    config = collector("- {name: a, type: always_sample}\n", extra=(
        "  tail_sampling/spare:\n    policies: [{name: t, type: trace_state, trace_state: {key: k}}]\n"
        "  batch: {}\nexporters:\n  otlp: {endpoint: x:4317}\n"))
    code, text, out = run_import(tmp_path, config)
    assert code == 0, text
    assert "processors.tail_sampling/spare: in no service pipeline: otelcol does not run it" in text
    assert "left in otelcol (no recohop stage of their kind): processors.batch, exporters.otlp" in text


def test_several_instances_need_only(tmp_path: Path) -> None:
    config = (
        "processors:\n  tail_sampling/a:\n    policies: [{name: a, type: always_sample}]\n"
        "  tail_sampling/b:\n    policies: [{name: t, type: trace_state, trace_state: {key: k}}]\n"
        "service:\n  pipelines:\n    traces/a: {receivers: [otlp], processors: [tail_sampling/a], exporters: [otlp]}\n"
        "    traces/b: {receivers: [otlp], processors: [tail_sampling/b], exporters: [otlp]}\n")
    code, text, _ = run_import(tmp_path, config)
    assert code == 2 and "several tail_sampling components; a hop runs one tail_sampling stage" in text
    code, text, out = run_import(tmp_path, config, "--only", "tail_sampling/a")
    assert code == 0, text
    assert [p["name"] for p in yaml.safe_load((out / "policies.yaml").read_text())["policies"]] == ["a"]
    code, text, _ = run_import(tmp_path, config, "--only", "tail_sampling/c")
    assert code == 2 and "a component id of this config (for --only)" in text


def test_nothing_to_import_is_an_error(tmp_path: Path) -> None:
    code, text, _ = run_import(tmp_path, "processors:\n  batch: {}\n")
    assert code == 2 and "nothing to import" in text


def test_spanmetrics_after_sampling_keeps_otelcols_order(tmp_path: Path) -> None:
    config = ("processors:\n  tail_sampling:\n    policies: [{name: a, type: always_sample}]\n"
              "connectors:\n  spanmetrics: {}\n"
              "service:\n  pipelines:\n    traces: {receivers: [otlp], processors: [tail_sampling], "
              "exporters: [spanmetrics]}\n    metrics: {receivers: [spanmetrics], exporters: [debug]}\n")
    code, text, out = run_import(tmp_path, config)
    assert code == 0, text
    assert "pipeline: tail_sampling -> spanmetrics" in text
    assert "otelcol counts spans after tail sampling" in text
    assert [s["type"] for s in yaml.safe_load((out / "recohop.yaml").read_text())["pipeline"]] == \
        ["tail_sampling", "spanmetrics"]


def test_policy_check_still_works(tmp_path: Path) -> None:
    code, text = run_cli("policy", "check", "collector-config/policies/default.yaml")
    assert code == 0 and "default.yaml: ok (9 policies" in text


@pytest.mark.parametrize(("condition", "expected"), [
    ('"v" == attributes["k"]', [{"type": "attribute", "key": "k", "value": "v", "scope": "span"}]),
    ('span.attributes["k"] >= 2.5', [{"type": "attribute", "key": "k", "min": 2.5, "scope": "span"}]),
    ('10 >= attributes["k"]', [{"type": "attribute", "key": "k", "max": 10, "scope": "span"}]),
    ('resource.attributes["service.name"] == "a\\"b"',
     [{"type": "attribute", "key": "service.name", "value": 'a"b', "scope": "resource"}]),
    ('IsMatch(attributes["http.route"], "^/api/\\\\d+$")',
     [{"type": "attribute", "key": "http.route", "regex": "^/api/\\d+$", "scope": "span"}]),
    ('(attributes["a"] == true) or (span.status.code == STATUS_CODE_ERROR)',
     [{"type": "attribute", "key": "a", "value": True, "scope": "span"},
      {"type": "status_code", "exception_events": False}]),
    ("true", [{"type": "always"}]),
])
def test_ottl_conditions_that_translate(condition: str, expected: list[dict[str, Any]]) -> None:
    assert span_condition_policies(condition) == expected


@pytest.mark.parametrize("condition", [
    'attributes["a"] == attributes["b"]', 'status.code == STATUS_CODE_OK', 'IsMatch(name, "x")',
    'attributes["a"] ==', 'Len(attributes["a"]) > 3', 'attributes["a"] == nil',
])
def test_ottl_conditions_that_do_not(condition: str) -> None:
    with pytest.raises(OttlRefused):
        span_condition_policies(condition)


@pytest.mark.parametrize(("text", "ns"), [
    ("2s", 2 * 10**9), ("500ms", 500 * 10**6), ("1h2m3.5s", 3723 * 10**9 + 5 * 10**8), ("1.5us", 1500),
    ("0", 0), (250, 250), ("10", None), ("5 s", None), ("", None),
])
def test_go_durations(text: Any, ns: int | None) -> None:
    assert go_duration_ns(text) == ns


@pytest.mark.parametrize("threshold_ms", [0, 1, 7, 200, 499, 500, 501, 999, 1000, 86_400_000])
def test_latency_threshold_is_otelcols_millisecond_cut(threshold_ms: int) -> None:
    """otelcol keeps floor(duration_ms) > threshold_ms; the recohop threshold keeps duration > T: the same set."""
    built = latency.build(Node({"threshold": latency_threshold(threshold_ms)}, "<test>"), "t")
    assert built.threshold_ns == (threshold_ms + 1) * 1_000_000 - 1  # type: ignore[attr-defined]


@pytest.mark.slow
def test_translation_inputs_are_valid_otelcol_configs(tmp_path: Path) -> None:
    """The policies translated above are what otelcol v0.158 itself accepts (`otelcol validate`)."""
    from otelcol_fixture import otelcol_binary, validate

    policies = "".join(f"- {otelcol}\n" for otelcol, _ in TRANSLATIONS)
    config = tmp_path / "otelcol.yaml"
    config.write_text("receivers:\n  otlp: {protocols: {grpc: {endpoint: 127.0.0.1:0}}}\nexporters:\n  debug: {}\n"
                      + collector(policies).replace("exporters: [otlp]", "exporters: [debug]"))
    result = validate(otelcol_binary(), config)
    assert result.returncode == 0, result.stderr[-3000:]
