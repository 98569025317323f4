"""The README's main job in short mode: the report has every section and its figures agree with ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_short_run_reports_expected_sections(tmp_path: Path) -> None:
    out = tmp_path / "demo"  # given relative, as a user would (`--out demo`), from tmp_path
    result = subprocess.run([sys.executable, "-m", "processor", "demo", "--out", "demo", "--duration", "10"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (out / "report.md").read_text()
    for section in ("## Traffic", "## Traces kept per policy", "## Redactions per rule",
                    "## Series per derived metric", "## CTR per placement", "## Files"):
        assert section in report
        assert section in result.stdout
    figures = json.loads((out / "report.json").read_text())
    assert figures["spans_in"] > 0 and 0 < figures["spans_out"] < figures["spans_in"]
    assert figures["special_missing"] == 0  # every error/fallback/cold-start/slow trace was kept
    assert figures["worst_ctr_difference"] < 0.02  # metrics from 100 % of spans, although traces were sampled
    for name in ("recommender-overview.json", "hop-health.json", "alerts.rules.yml"):
        assert (out / "dashboards" / name).exists()
    if figures["prometheus"]:
        assert (out / "recommender-overview.png").stat().st_size > 10_000
    # No raw PII reached the kept output on disk.
    kept = "".join(p.read_text() for p in (out / "kept").glob("export.jsonl*"))
    assert "@example.com" not in kept and "shopper" not in kept
    user_ids = [attr["value"]["stringValue"] for line in kept.splitlines()
                for rs in json.loads(line).get("resourceSpans", []) for ss in rs["scopeSpans"]
                for span in ss["spans"] for attr in span.get("attributes", []) if attr["key"] == "user.id"]
    assert user_ids and all(uid.startswith("u_") and len(uid) > 8 for uid in user_ids)
