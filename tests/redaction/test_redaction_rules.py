"""Rules files: the schema's error messages name file, key path and expectation; matching semantics; the
shipped default and example files stay valid and the default file equals the built-in default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from processor.config import DEFAULT_CONFIG
from processor.config_node import ConfigError
from processor.redaction.actions import generalise_geo, generalise_ip, make_age
from processor.redaction.rules import DEFAULT_RULES, default_stage_node, load_rules_file, parse_rules

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "collector-config" / "redaction"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("rules:\n  - key: a\n    action: explode\n", "rules[0].action", "one of pseudonymise, drop, mask"),
    ("rules:\n  - key: a\n    glob: b\n    action: drop\n", "rules[0].key", "exactly one of key, glob or regex"),
    ("rules:\n  - action: drop\n", "rules[0].key", "exactly one of key, glob or regex"),
    ("rules:\n  - regex: '(unclosed'\n    action: drop\n", "rules[0].regex", "a valid regular expression"),
    ("rules:\n  - key: a\n    action: generalise\n", "rules[0].as", "what to generalise the value as"),
    ("rules:\n  - key: a\n    action: generalise\n    as: city\n", "rules[0].as", "one of ip, age, geo"),
    ("rules:\n  - key: a\n    action: generalise\n    as: age\n    bands: [30, 20]\n", "rules[0].bands",
     "increasing positive integers"),
    ("rules:\n  - key: a\n    action: drop\n    colour: red\n", "rules[0].colour", "a known key"),
    ("mode: blocklist\n", "mode", "one of denylist, allowlist"),
    ("otherwise: drop\n", "otherwise", "no `otherwise` in denylist mode"),
    ("rules: user.*\n", "rules", "a list of rules"),
    ("pseudonym:\n  key: hunter2hunter2hunter2\n", "pseudonym.key", "key_env or key_file"),
    ("pseudonym:\n  key_env: K\n  key_file: k.txt\n", "pseudonym.key_file", "either key_env or key_file"),
    ("pseudonym:\n  length: 4\n", "pseudonym.length", "an integer >= 8"),
    ("detectors:\n  kinds: [email, passport]\n", "detectors.kinds[1]", "one of bearer, jwt, email"),
    ("detectors:\n  phone_regions: [US, XX]\n", "detectors.phone_regions[1]", "one of US, GB"),
    ("blocked_values: ['(x']\n", "blocked_values[0]", "a valid regular expression"),
    ("blocked_values: ['x*']\n", "blocked_values[0]", "cannot match the empty string"),
    ("summary_attribute: yes please\n", "summary_attribute", "true or false"),
    ("colour: red\n", "colour", "a known key"),
])
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_rules_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: expected "), message
    assert expected in message


def test_key_value_is_never_echoed_in_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_rules_file(write(tmp_path, "pseudonym:\n  key: s3cr3t-pseudonym-key-value\n"))
    assert "s3cr3t" not in str(err.value)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable file"):
        load_rules_file(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_rules_file(write(tmp_path, "rules: [\n"))


def test_first_match_wins_and_patterns_match_as_documented(tmp_path: Path) -> None:
    rules = load_rules_file(write(tmp_path, """
rules:
  - {key: user.segment, action: keep}
  - {glob: "user.*", action: pseudonymise, prefix: u_}
  - {regex: "^(session|device)\\\\.id$", action: drop}
  - {key: client.address, action: generalise, as: ip}
"""))
    assert rules.lookup("user.segment").action == "keep"
    assert rules.lookup("user.id").action == "pseudonymise"
    assert rules.lookup("user.address.city").action == "pseudonymise"
    assert rules.lookup("device.id").action == "drop"
    assert rules.lookup("device.identifier") is None
    assert rules.lookup("enduser.id") is None
    assert rules.lookup("client.address").generalise is not None
    assert rules.pseudonymising_rule is not None and "rules[1]" in rules.pseudonymising_rule


def test_allowlist_gives_unlisted_keys_the_otherwise_action(tmp_path: Path) -> None:
    rules = load_rules_file(write(tmp_path, "mode: allowlist\notherwise: mask\nrules:\n  - {key: a, action: keep}\n"))
    assert rules.lookup("a").action == "keep"
    assert rules.lookup("b").action == "mask" and rules.lookup("b").name == "allowlist.otherwise"


def test_default_file_equals_builtin_default_and_example_is_valid() -> None:
    assert yaml.safe_load((CONFIG_DIR / "default.yaml").read_text()) == DEFAULT_RULES
    builtin = yaml.safe_load(DEFAULT_CONFIG.read_text())["pipeline"]
    assert {"type": "redaction", "rules": "builtin:redaction/default.yaml"} in builtin  # the one file, no copy
    default = load_rules_file(CONFIG_DIR / "default.yaml")
    assert [r.name for _, r in default.rules] == ["not-personal", "user.*", "enduser.*", "identifiers", "credentials",
                                                  "coordinates", "client.address", "http.client_ip"]
    assert len(default.detector_kinds) == 13  # every built-in kind (custom: only with blocked_values)
    example = load_rules_file(CONFIG_DIR / "example.yaml")
    assert {r.action for _, r in example.rules} == {"pseudonymise", "drop", "mask", "generalise", "keep"}
    node = default_stage_node()
    assert node.data["type"] == "redaction"
    assert parse_rules(node).mode == "denylist"


def test_generalisations() -> None:
    assert generalise_ip("203.0.113.42") == "203.0.113.0/24"
    assert generalise_ip("203.0.113.42:443") == "203.0.113.0/24"
    assert generalise_ip("2001:db8:85a3:1234::8a2e:370:7334") == "2001:db8:85a3::/48"
    assert generalise_ip("::ffff:192.0.2.128") == "192.0.2.0/24"
    assert generalise_ip("localhost") == "<ip>" and generalise_ip(42) == "<ip>"
    age = make_age([18, 25, 35, 45, 55, 65])
    assert [age(v) for v in (12, 18, 24, 37, "41", 70.5, -3, "old", True)] == [
        "<18", "18-24", "18-24", "35-44", "35-44", "65+", "<age>", "<age>", "<age>"]
    assert [generalise_geo(v) for v in ("US-CA", "Berlin, DE", "de", "Paris, Île-de-France, France",
                                        "52.52,13.40", 7)] == ["US", "DE", "DE", "France", "<geo>", "<geo>"]
