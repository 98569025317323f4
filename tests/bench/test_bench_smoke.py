"""The benchmark's smoke mode (what CI runs): every row runs end to end against real processes and lands in
the JSON; nothing about speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.runner import STAGE_KINDS

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rotel_installed() -> bool:
    try:
        import rotel
    except ImportError:
        return False
    return (Path(rotel.__file__).parent / "rotel-agent").exists()


def test_smoke_writes_every_row(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("pipeline:\n  - type: passthrough\n")
    out = tmp_path / "out" / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("BENCH_PROFILE_HOP", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "smoke", "--out", str(out), "--hop-config", f"extra_stage={extra}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "spans/s" in proc.stdout and "passthrough/parse_only" in proc.stdout

    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    expected = {"parse_only", "client_ceiling", "recohop_passthrough", "builtin_default", "builtin_default_python",
                "extra_stage", "recohop_passthrough_http", "builtin_default_http"}
    expected |= {f"stage_{k}" for k in STAGE_KINDS if (REPO_ROOT / "processor" / "stages" / f"{k}.py").exists()}
    if _rotel_installed():
        expected.add("rotel_passthrough")
    assert expected <= set(rows), f"missing rows: {expected - set(rows)}"

    for name in ("parse_only", "client_ceiling", "recohop_passthrough", "extra_stage", "rotel_passthrough"):
        if name in rows:
            assert rows[name]["spans_per_s"] > 0, rows[name]
    # Pass-through hops forward what they acknowledge: the null sink saw requests within the window.
    for name in ("client_ceiling", "recohop_passthrough", "extra_stage", "recohop_passthrough_http"):
        assert rows[name]["sink"]["requests"] > 0, rows[name]
    assert rows["recohop_passthrough_http"]["transport"] == "http"
    assert rows["recohop_passthrough"]["rss_bytes"] > 0
    assert result["ratios"]["passthrough/parse_only"] is not None
    assert result["workload"]["spans_per_request"] > 700
