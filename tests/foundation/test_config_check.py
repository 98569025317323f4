"""`recohop check`: bad config files get a message naming the file, the key path and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from processor.config import DEFAULT_CONFIG, load_config
from processor.config_node import ConfigError

REPO = Path(__file__).resolve().parents[2]


def run_check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "processor", "check", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("receiver:\n  endpoint: 4317\n", "receiver.endpoint", "host:port"),
    ("receiver:\n  endpont: 127.0.0.1:4317\n", "receiver.endpont", "unknown key"),
    ("exporter:\n  compression: zstd\n", "exporter.compression", "one of none, gzip"),
    ("exporter:\n  queue:\n    max_bytes: lots\n", "exporter.queue.max_bytes", "a size"),
    ("exporter:\n  retry:\n    max_interval: soon\n", "exporter.retry.max_interval", "a duration"),
    ("pipeline:\n  - type: nosuchstage\n", "pipeline[0].type", "one of"),
    ("pipeline: {}\n", "pipeline", "a list"),
    ("receiver: [1, 2\n", "line", "valid YAML"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, text: str, key: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = run_check(config)
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert key in result.stderr
    assert expected in result.stderr


def test_default_and_examples_pass_check() -> None:
    key = {"RECOHOP_PSEUDONYM_KEY": "check-test-key-0123456789"}
    examples = [DEFAULT_CONFIG, *sorted((REPO / "collector-config").glob("recohop*.yaml"))]
    assert len(examples) >= 2
    for example in examples:
        result = run_check(example, key)
        assert result.returncode == 0, result.stderr


def test_pseudonymising_config_without_key_is_refused() -> None:
    """Only the zero-config default may invent a throwaway key; a config file must bring its own."""
    env = {k: v for k, v in os.environ.items() if k != "RECOHOP_PSEUDONYM_KEY"}
    result = subprocess.run([sys.executable, "-m", "processor", "check", str(DEFAULT_CONFIG)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "RECOHOP_PSEUDONYM_KEY" in result.stderr and "redaction/default.yaml" in result.stderr


def test_load_config_raises_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("telemetry:\n  log_level: loud\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == "telemetry.log_level"
