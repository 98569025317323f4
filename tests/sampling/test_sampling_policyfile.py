"""Policy files: every kind builds and behaves; errors name the file, the policy and the key."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sampling_helpers import DEFAULT_POLICIES, REPO, Harness

from bench.sampling_workload import make_trace, to_requests
from processor.cli import main
from processor.config_node import ConfigError
from processor.sampling.policyfile import load_policy_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key, expected", [
    ("policies:\n  - name: a\n    type: latency\n", "policies[0] (a).threshold", "a duration"),
    ("policies:\n  - name: a\n    type: latency\n    threshold: fast\n", "policies[0] (a).threshold",
     "a duration such as 500ms"),
    ("policies:\n  - name: a\n    type: probabilistic\n    percentage: 150\n", "policies[0] (a).percentage",
     "a number in [0, 100]"),
    ("policies:\n  - name: a\n    type: attribute\n    key: k\n    valu: 1\n", "policies[0] (a).value",
     "one of value, values, regex or min/max"),
    ("policies:\n  - name: a\n    type: attribute\n    key: k\n    regex: '('\n", "policies[0] (a).regex",
     "a valid regular expression"),
    ("policies:\n  - name: a\n    type: status_code\n    colour: red\n", "policies[0] (a).colour",
     "a known key"),
    ("policies:\n  - name: a\n    type: coin_flip\n", "policies[0] (a).type", "one of always, and"),
    ("policies:\n  - type: always\n", "policies[0]", "a policy with a 'name'"),
    ("policies:\n  - {name: a, type: always}\n  - {name: a, type: always}\n", "policies[1] (a).name",
     "a unique policy name"),
    ("policies:\n  - name: a\n    type: and\n    policies:\n      - {type: latency, threshold: x}\n",
     "policies[0] (a).policies[0].threshold", "a duration"),
    ("policies:\n  - name: a\n    type: drop\n", "policies[0] (a).policy", "the sub-policy"),
    ("policies: []\n", "policies", "a non-empty list"),
    ("rules: []\n", "policies", "a non-empty list"),
])
def test_errors_name_file_policy_and_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_policy_file(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert expected in err.value.expected


def test_policy_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(DEFAULT_POLICIES)]) == 0
    assert "ok (9 policies: health-checks [drop], errors [status_code]" in capsys.readouterr().out
    assert main(["policy", "check", str(REPO / "collector-config" / "policies" / "example.yaml")]) == 0
    bad = write(tmp_path, "policies:\n  - name: slow\n    type: latency\n    threshold: soon\n")
    assert main(["policy", "check", str(bad)]) == 2
    assert f"{bad}: policies[0] (slow).threshold: expected a duration" in capsys.readouterr().err


def decide(policy_yaml: str, trace, tmp_path: Path, logs=None) -> tuple[bool, str]:  # noqa: ANN001
    h = Harness(write(tmp_path, policy_yaml))
    if logs is not None:
        h.send_logs(logs)
    h.send(to_requests(trace.spans)[0])
    h.advance(2.1)
    [(_, kept, policy)] = h.decisions
    return kept, policy


def test_every_kind_on_real_traces(tmp_path: Path) -> None:
    rng = random.Random(5)
    ordinary = make_trace(rng, nspans=10)
    root = ordinary.spans[-1]
    root.attributes.add(key="reco.num_candidates_x").value.int_value = 700
    root.attributes.add(key="reco.score").value.double_value = 0.25
    cases = [
        ("{type: always}", True),
        ("{type: span_count, min: 10}", True),
        ("{type: span_count, min: 11}", False),
        ("{type: span_count, min: 5, max: 9}", False),
        ("{type: attribute, key: reco.placement, values: [cart, home, email, product_page]}", True),
        ("{type: attribute, key: reco.model_version, regex: '^cf-2026'}", True),
        ("{type: attribute, key: reco.model_version, regex: '^mf-'}", False),
        ("{type: attribute, key: reco.num_candidates_x, min: 500, max: 800}", True),
        ("{type: attribute, key: reco.num_candidates_x, value: 700}", True),
        ("{type: attribute, key: reco.num_candidates_x, value: '700'}", False),
        ("{type: attribute, key: reco.score, max: 0.5}", True),
        ("{type: attribute, key: reco.cold_start, value: false}", True),
        ("{type: attribute, key: reco.cold_start, value: 0}", False),
        ("{type: attribute, key: service.name, value: recommendation-service, scope: resource}", True),
        ("{type: attribute, key: service.name, value: recommendation-service, scope: span}", False),
        ("{type: attribute, key: reco.placement, value: home, scope: resource}", False),
        ("{type: latency, threshold: 1ms}", True),
        ("{type: latency, threshold: 10s}", False),
        ("{type: latency, span_name: reco.generate, threshold: 1ms}", True),
        ("{type: latency, span_name: reco.nothing, threshold: 1ms}", False),
        ("{type: probabilistic, percentage: 100}", True),
        ("{type: probabilistic, percentage: 0}", False),
        ("{type: status_code}", False),
        ("{type: log_severity}", False),
        ("{type: rate_limit, spans_per_second: 100}", True),
        ("{type: rate_limit, spans_per_second: 5}", False),
        ("{type: not, policy: {type: status_code}}", True),
        ("{type: and, policies: [{type: always}, {type: span_count, min: 11}]}", False),
        ("{type: and, policies: [{type: always}, {type: attribute, key: reco.placement, value: home}]}", True),
    ]
    for policy, expected in cases:
        kept, name = decide(f"policies:\n  - {{name: p, {policy[1:]}\n", ordinary, tmp_path)
        assert (kept, name) == ((True, "p") if expected else (False, "none")), policy


def test_drop_wins_over_keep(tmp_path: Path) -> None:
    trace = make_trace(random.Random(6), "error")
    text = ("policies:\n  - {name: errors, type: status_code}\n"
            "  - {name: no-email, type: drop, policy: {type: attribute, key: reco.cold_start, value: false}}\n")
    assert decide(text, trace, tmp_path) == (False, "no-email")


def test_probabilistic_inside_and_writes_threshold(tmp_path: Path) -> None:
    trace = make_trace(random.Random(7))
    text = ("policies:\n  - name: home-half\n    type: and\n    policies:\n"
            "      - {type: attribute, key: reco.placement, value: home}\n"
            "      - {type: probabilistic, percentage: 100}\n")
    h = Harness(write(tmp_path, text))
    h.send(to_requests(trace.spans)[0])
    h.advance(2.1)
    assert {s.trace_state for s in h.out_spans()} == {"ot=th:0"}


def test_stage_config_errors_name_the_hop_config_key(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from processor.config_node import Node
    from processor.stages.base import StageContext
    from processor.stages.tail_sampling import build, default_stage_config

    ctx = StageContext(registry=CollectorRegistry())
    with pytest.raises(ConfigError) as err:
        build(Node({"policies": "missing.yaml"}, tmp_path / "hop.yaml", "pipeline[0]"), ctx)
    assert err.value.key == "pipeline[0].policies"
    with pytest.raises(ConfigError) as err:
        build(Node({"flush_interval": 0}, tmp_path / "hop.yaml", "pipeline[0]"), StageContext(CollectorRegistry()))
    assert err.value.key == "pipeline[0].flush_interval"
    config = default_stage_config()
    node = Node({k: v for k, v in config.items() if k != "type"}, "<default>")
    stage = build(node, StageContext(CollectorRegistry()))
    node.done()
    assert stage.name == "tail_sampling" and Path(config["policies"]) == DEFAULT_POLICIES


def test_attribute_on_an_event_only_does_not_match(tmp_path: Path) -> None:
    trace = make_trace(random.Random(9), "ordinary")
    event = trace.spans[0].events.add(name="retry")
    event.attributes.add(key="reco.fallback").value.bool_value = True
    kept, policy = decide("policies:\n  - {name: fb, type: attribute, key: reco.fallback, value: true}\n",
                          trace, tmp_path)
    assert (kept, policy) == (False, "none")
