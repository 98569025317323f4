"""The preview command draws the overview dashboard from a real Prometheus into a PNG."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

from dashboards.preview import caption, grafana_rate_interval, render, short_run_rate_window
from dashboards.validate import panel_targets
from processor.demo import preview_window

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


def test_rate_windows_fit_the_history() -> None:
    """Grafana's $__rate_interval for long ranges; a quarter of the run (at least four scrapes) for short runs,
    which the demo uses: a one-minute run at 1 s scrapes gets 15 s windows, not 5 minutes."""
    assert grafana_rate_interval(step=1.0, scrape_interval=15.0) == "60s"
    assert grafana_rate_interval(step=60.0, scrape_interval=15.0) == "75s"
    assert short_run_rate_window(60, 1.0) == "15s"
    assert short_run_rate_window(8, 1.0) == "4s"
    window = preview_window(started_at=1000.0, end=1065.4, duration=60)
    assert window == {"window": "66s", "end": 1065.4, "scrape_interval": 1.0, "rate_interval": "15s"}


def test_caption_names_the_range_its_axes_span_and_the_windows() -> None:
    text = caption("Recommender overview", 1_700_000_000.0, 1_700_000_066.0, "15s", 1.0)
    start = datetime.fromtimestamp(1_700_000_000).astimezone()
    assert f"{start:%Y-%m-%d %H:%M:%S} to " in text and "(66s)" in text
    assert "rates over 15s windows" in text and "one point per 1 s" in text
