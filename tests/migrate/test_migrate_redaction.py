"""`recohop policy import`: otelcol's redaction processor -> a recohop rules file (the live comparison with the
collector is in test_migrate_otelcol_recommender.py)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
import yaml
from migrate_peers import run_cli


def import_redaction(tmp_path: Path, settings: str) -> tuple[int, str, Path]:
    source = tmp_path / "otelcol.yaml"
    source.write_text("processors:\n  redaction:\n" + "".join(f"    {line}\n" for line in settings.splitlines())
                      + "service:\n  pipelines:\n    traces: {receivers: [otlp], processors: [redaction], "
                        "exporters: [otlp]}\n")
    out = tmp_path / "out"
    code, text = run_cli("policy", "import", str(source), "--out", str(out))
    return code, text, out


def rules_of(out: Path) -> dict:
    return yaml.safe_load((out / "redaction.yaml").read_text())


def test_allowlist_with_ignored_and_blocked_keys(tmp_path: Path) -> None:
    code, text, out = import_redaction(tmp_path, """\
allow_all_keys: false
allowed_keys: [service.name, user.id, http.route, session.token]
ignored_keys: [debug.raw]
ignored_key_patterns: ["^internal\\\\."]
blocked_key_patterns: ["token$", "^user\\\\."]""")
    assert code == 0, text
    assert rules_of(out) == {
        "mode": "allowlist", "otherwise": "drop",
        "rules": [{"key": "debug.raw", "action": "keep", "detectors": False},
                  {"regex": "^internal\\.", "action": "keep", "detectors": False},
                  {"key": "service.name", "action": "keep", "detectors": False},
                  {"key": "user.id", "action": "mask"},
                  {"key": "http.route", "action": "keep", "detectors": False},
                  {"key": "session.token", "action": "mask"}],
        "detectors": False}
    code, checked = run_cli("redact", "check", str(out / "redaction.yaml"))
    assert code == 0 and "ok (allowlist; 4 keep, 2 mask; detectors: off" in checked


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("user.id", "u-42", "****  [rule user.id]"),                # allowed, blocked pattern: masked
    ("http.route", "/a/jane@example.com", "/a/jane@example.com  [unchanged]"),  # allowed: no value scanning
    ("client.address", "10.1.2.3", "(attribute dropped)  [rule allowlist.otherwise]"),  # not allowed
    ("internal.x", "anything", "anything  [unchanged]"),        # ignored
])
def test_the_rules_do_what_otelcol_does(tmp_path: Path, key: str, value: str, shown: str) -> None:
    code, text, out = import_redaction(tmp_path, """\
allowed_keys: [user.id, http.route]
ignored_key_patterns: ["^internal\\\\."]
blocked_key_patterns: ["^user\\\\."]""")
    assert code == 0, text
    code, result = run_cli("redact", "test", str(out / "redaction.yaml"), "--key-name", key, "--value", value)
    assert code == 0
    assert result.strip() == shown


def test_hmac_sha256_hashes_as_otelcol_with_the_same_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, text, out = import_redaction(tmp_path, """\
allow_all_keys: true
blocked_key_patterns: [email]
hash_function: hmac-sha256
hmac_key: ${env:OTEL_HMAC}""")
    assert code == 0, text
    rules = rules_of(out)
    assert rules["mode"] == "denylist" and "otherwise" not in rules
    assert rules["pseudonym"] == {"key_env": "OTEL_HMAC", "prefix": "", "length": 64}
    assert rules["rules"] == [{"regex": "email", "action": "pseudonymise"}]
    key = "k" * 40
    monkeypatch.setenv("OTEL_HMAC", key)
    code, result = run_cli("redact", "test", str(out / "redaction.yaml"), "--key-name", "user.email",
                           "--value", "jane@example.com")
    assert code == 0, result
    assert result.split()[0] == hmac.new(key.encode(), b"jane@example.com", hashlib.sha256).hexdigest()


def test_a_key_written_in_the_config_is_never_copied(tmp_path: Path) -> None:
    secret = "s3cret-s3cret-s3cret-s3cret-s3cret-42"
    code, text, out = import_redaction(tmp_path, f"""\
allow_all_keys: true
blocked_key_patterns: [password]
hash_function: hmac-sha256
hmac_key: {secret}""")
    assert code == 0, text
    assert rules_of(out)["pseudonym"]["key_env"] == "RECOHOP_PSEUDONYM_KEY"
    assert "set it to the same secret" in text
    for written in out.iterdir():
        assert secret not in written.read_text()
    assert secret not in text


@pytest.mark.parametrize(("function", "length"), [("md5", 32), ("sha1", 40), ("sha3", 64), ("hmac-sha512", 64)])
def test_other_hashes_become_keyed_pseudonyms_with_a_note(tmp_path: Path, function: str, length: int) -> None:
    key = "hmac_key: ${env:K}" if function.startswith("hmac") else ""
    code, text, out = import_redaction(tmp_path, f"allow_all_keys: true\nblocked_key_patterns: [x]\n"
                                                 f"hash_function: {function.upper()}\n{key}")
    assert code == 0, text
    assert rules_of(out)["pseudonym"]["length"] == length
    assert f"recohop hashes with HMAC-SHA256 under a secret key, not {function}" in text


def test_summary_and_no_op_settings_are_noted(tmp_path: Path) -> None:
    code, text, out = import_redaction(tmp_path, """\
allow_all_keys: true
allowed_values: [".*@example.com"]
summary: debug
url_sanitizer: {enabled: false, attributes: [url.full]}
db_sanitizer: {sql: {enabled: false}}""")
    assert code == 0, text
    assert rules_of(out) == {"mode": "denylist", "rules": [], "detectors": False, "summary_attribute": True}
    assert "processors.redaction.allowed_values: no effect in otelcol without blocked_key_patterns" in text
    assert "otelcol adds redaction.redacted/masked/allowed/ignored.count and the key lists" in text


@pytest.mark.parametrize(("settings", "where", "why"), [
    ('blocked_values: ["4[0-9]{12}(?:[0-9]{3})?"]', "blocked_values", "not with custom regexes"),
    ("blocked_key_patterns: [token]\nallowed_values: [^ok$]", "allowed_values", "cannot exempt values"),
    ("url_sanitizer: {enabled: true}", "url_sanitizer", "no sanitizer for URLs"),
    ("db_sanitizer: {sql: {enabled: true}}", "db_sanitizer", "no sanitizer for database statements"),
    ("hash_function: sha256", "hash_function", "not a hash function of otelcol v0.158"),
    ("hash_function: hmac-sha256\nblocked_key_patterns: [x]", "hmac_key", "needs hmac_key"),
    ('blocked_key_patterns: ["\\\\pL"]', "blocked_key_patterns[0]", "Python re"),
    ("summary: loud", "summary", "not silent, info or debug"),
    ("redact_everything: true", "redact_everything", "not a setting of otelcol v0.158's redaction processor"),
])
def test_refusals(tmp_path: Path, settings: str, where: str, why: str) -> None:
    code, text, out = import_redaction(tmp_path, "allow_all_keys: true\n" + settings)
    assert code == 2, text
    line = next(line for line in text.splitlines() if line.startswith(f"  processors.redaction.{where}: "))
    assert why in line, line
    assert not out.exists()
