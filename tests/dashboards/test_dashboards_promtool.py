"""`promtool check rules` accepts the generated rule files; `promtool test rules` runs one spec per alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards import alerts, build

PROMTOOL = "/usr/bin/promtool"
SPECS = Path(__file__).resolve().parent / "promtool"

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="Debian promtool not installed")


def _workdir(tmp_path: Path) -> Path:
    for name, text in build.render().items():
        if name.endswith(".rules.yml"):
            (tmp_path / name).write_text(text)
    return tmp_path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_check_rules(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    done = _promtool("check", "rules", "recording.rules.yml", "alerts.rules.yml", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts.ALERTS)} rules found" in done.stdout


def _spec_alerts(path: Path) -> set[str]:
    spec = yaml.safe_load(path.read_text())
    return {t["alertname"] for test in spec["tests"] for t in test.get("alert_rule_test", [])}


def test_one_spec_per_alert_with_a_silent_case() -> None:
    specs = sorted(SPECS.glob("*.test.yml"))
    covered = [name for path in specs for name in _spec_alerts(path)]
    assert sorted(covered) == sorted(a.name for a in alerts.ALERTS)
    for path in specs:
        cases = [t for test in yaml.safe_load(path.read_text())["tests"] for t in test["alert_rule_test"]]
        assert any(not c["exp_alerts"] for c in cases) and any(c["exp_alerts"] for c in cases), path.name


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.glob("*.test.yml")))
def test_rules_unit_tests(spec: str, tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    shutil.copy(SPECS / spec, work / spec)
    done = _promtool("test", "rules", spec, cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ctr_spec_fails_if_a_healthy_placement_were_expected(tmp_path: Path) -> None:
    """The specs can fail: expecting the healthy `home` placement to alert too is rejected by promtool."""
    work = _workdir(tmp_path)
    spec = yaml.safe_load((SPECS / "reco_low_ctr.test.yml").read_text())
    firing = spec["tests"][0]["alert_rule_test"][-1]["exp_alerts"]
    extra = yaml.safe_load(yaml.safe_dump(firing[0]))
    extra["exp_labels"]["placement"] = "home"
    extra["exp_annotations"] = {k: v.replace("email", "home") for k, v in extra["exp_annotations"].items()}
    firing.append(extra)
    (work / "wrong.test.yml").write_text(yaml.safe_dump(spec))
    done = _promtool("test", "rules", "wrong.test.yml", cwd=work)
    assert done.returncode != 0 and "home" in done.stdout + done.stderr
