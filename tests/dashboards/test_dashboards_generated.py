"""The checked-in dashboards/generated/ copy equals a fresh build, and the build is deterministic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from dashboards import build
from processor.cli import main as recohop

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "dashboards" / "generated"


def _tree(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir()) if p.is_file()}


def test_checked_in_copy_is_current(tmp_path: Path) -> None:
    build.write(tmp_path)
    fresh, checked_in = _tree(tmp_path), _tree(GENERATED)
    stale = sorted(n for n in fresh.keys() | checked_in.keys() if fresh.get(n) != checked_in.get(n))
    assert not stale, f"stale {stale}: run `python -m dashboards build --out dashboards/generated`"


def test_build_is_deterministic_and_parseable() -> None:
    first, second = build.render(), build.render()
    assert first == second
    for name, text in first.items():
        data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        assert data, name
        if name.endswith(".json"):
            assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"  # keys sorted


def test_python_m_dashboards_and_recohop_cli_write_the_same_files(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dashboards", "build", "--out", str(tmp_path / "a")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert recohop(["dashboards", "build", "--out", str(tmp_path / "b")]) == 0
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b") == build.render()


def test_trace_datasource_uid_is_configurable(tmp_path: Path) -> None:
    assert recohop(["dashboards", "build", "--out", str(tmp_path), "--trace-datasource-uid", "jaeger-prod",
                    "--trace-datasource-type", "jaeger"]) == 0
    provisioning = yaml.safe_load((tmp_path / "grafana-datasources.yml").read_text())
    prom, traces = provisioning["datasources"]
    assert prom["jsonData"]["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "jaeger-prod"}]
    assert traces["type"] == "jaeger" and traces["uid"] == "jaeger-prod"
    overview = json.loads((tmp_path / "recommender-overview.json").read_text())
    assert any("jaeger-prod" in link["url"] for link in overview["links"])
