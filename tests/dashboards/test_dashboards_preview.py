"""The preview command draws the overview dashboard from a real Prometheus into a PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dashboards.preview import render
from dashboards.validate import panel_targets

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_preview_renders_every_overview_panel(prometheus: str, tmp_path: Path) -> None:
    out = tmp_path / "overview.png"
    with_data = render(prometheus, out, {}, window="1m")
    overview_panels = {t.panel for t in panel_targets() if t.dashboard == "Recommender overview"}
    assert with_data == len(overview_panels)
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 50_000


def test_preview_cli(prometheus: str, tmp_path: Path) -> None:
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, "-m", "dashboards", "preview", "--prometheus", prometheus,
                           "--out", str(out), "--range", "1m", "--var", "placement=home,cart"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
