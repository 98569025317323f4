"""`python -m bench.pipeline_inprocess`: the default pipeline in process runs to the end and reports its figure
(nothing about speed is asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bench.pipeline_inprocess", "--requests", "30", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_it_reports_cpu_per_request(tmp_path: Path) -> None:
    assert re.search(r"^20 requests of ~[\d,]+ bytes: \d+\.\d{3} ms CPU per request$", run(tmp_path), re.M)


def test_the_profile_lists_the_pipeline(tmp_path: Path) -> None:
    assert "pipeline.py" in run(tmp_path, "--profile")
