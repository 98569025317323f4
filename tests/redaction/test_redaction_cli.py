"""`recohop redact check|test` as real processes; pseudonyms agree across processes with the same key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from processor.redaction.pseudonym import Pseudonymiser

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "collector-config" / "redaction" / "default.yaml"
EXAMPLE = REPO / "collector-config" / "redaction" / "example.yaml"
KEY = "cli-test-key-0123456789abcdef"


def recohop(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECOHOP_PSEUDONYM_KEY"}
    env["PYTHONPATH"] = str(REPO)
    if key is not None:
        env["RECOHOP_PSEUDONYM_KEY"] = key
    return subprocess.run([sys.executable, "-m", "processor", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_check_valid_files_and_reports_key_state() -> None:
    ok = recohop("redact", "check", str(DEFAULT))
    assert ok.returncode == 0 and ": ok (denylist; 3 generalise, 1 keep, 1 mask, 3 pseudonymise" in ok.stdout
    assert "RECOHOP_PSEUDONYM_KEY (set)" in ok.stdout and KEY not in ok.stdout
    missing = recohop("redact", "check", str(EXAMPLE), key=None)
    assert missing.returncode == 0 and "NOT SET" in missing.stdout


def test_check_bad_file_names_file_key_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - glob: 'user.*'\n    action: hash\n")
    result = recohop("redact", "check", str(bad))
    assert result.returncode == 2
    assert f"{bad}: rules[0].action: expected one of pseudonymise, drop, mask, generalise, keep" in result.stderr


def test_test_shows_what_a_value_becomes_and_matches_other_processes() -> None:
    pseudo = recohop("redact", "test", str(DEFAULT), "--key-name", "user.id", "--value", "user-4242")
    expected = Pseudonymiser(KEY.encode()).pseudonym(b"user-4242", "u_")
    assert pseudo.stdout.split()[0] == expected  # a second process, same key: the same pseudonym
    again = recohop("redact", "test", str(DEFAULT), "--key-name", "user.id", "--value", "user-4242")
    assert again.stdout == pseudo.stdout
    other = recohop("redact", "test", str(DEFAULT), "--key-name", "user.id", "--value", "user-4242",
                    key="a-completely-different-key-000")
    assert other.stdout.split()[0] != expected
    detected = recohop("redact", "test", str(DEFAULT), "--value", "mail a+b@example.org or +44 20 7946 0958")
    assert detected.stdout.startswith("mail <email> or <phone>  [detector email, detector phone]")
    dropped = recohop("redact", "test", str(EXAMPLE), "--key-name", "user_agent.original", "--value", "x")
    assert dropped.stdout.startswith("(attribute dropped)")
    plain = recohop("redact", "test", str(DEFAULT), "--key-name", "reco.placement", "--value", "home")
    assert plain.stdout.strip() == "home  [unchanged]"
