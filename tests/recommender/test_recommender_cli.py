"""`python -m recommender ...` as users run it, and the simulator through a real recohop process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from recommender.faults import Faults
from recommender.simulate import run


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recommender", *args], capture_output=True, text=True, timeout=120)


def test_simulate_dry_run_prints_and_writes_ground_truth(tmp_path: Path) -> None:
    gt = tmp_path / "truth.json"
    res = _cli("simulate", "--dry-run", "--rps", "100", "--duration", "3", "--seed", "0",
               "--faults", "error=0.05,timeout=0.05,slow=0.05", "--ground-truth", str(gt))
    assert res.returncode == 0, res.stderr
    truth = json.loads(gt.read_text())
    assert f"requests {truth['requests']}" in res.stdout and "placement home" in res.stdout
    for key in ("impressions", "clicks", "conversions", "revenue", "per_placement", "per_variant",
                "cold_start_rate", "fallback_rate", "error_rate", "counts", "p95_ms", "trace_ids"):
        assert key in truth
    assert truth["run"]["exported"] is False
    assert all(len(t) == 32 for t in truth["trace_ids"]["error"]) and truth["counts"]["error"] > 0


def test_bad_faults_are_rejected_with_the_key() -> None:
    res = _cli("simulate", "--dry-run", "--faults", "eror=0.1")
    assert res.returncode == 2 and "eror=0.1" in res.stderr
    res = _cli("simulate", "--dry-run", "--faults", "drift=attic")
    assert res.returncode == 2 and "drift=attic" in res.stderr


def test_evaluate_writes_json_and_prometheus_text(tmp_path: Path) -> None:
    out, prom = tmp_path / "eval.json", tmp_path / "eval.prom"
    res = _cli("evaluate", "--seed", "0", "--out", str(out), "--prom", str(prom))
    assert res.returncode == 0, res.stderr
    summary = json.loads(out.read_text())
    models = summary["models"]
    assert models["als-f32-v1"]["ndcg@10"] > models["popularity"]["ndcg@10"]
    check = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(), capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


HOP = """
exporter:
  endpoint: {downstream}
pipeline: []
"""


def test_simulator_through_a_real_hop_delivers_every_span(downstream, start_hop) -> None:
    hop = start_hop(HOP.format(downstream=downstream.endpoint))
    truth = run(hop.endpoint, rps=100, duration=3, seed=0, faults=Faults(error=0.05, timeout=0.05)).to_dict()
    downstream.wait_for_spans(truth["spans"], timeout=15)
    spans = downstream.spans()
    roots = [s for s in spans if s.name == "reco.generate"]
    errors = sorted(s.trace_id.hex() for s in roots if s.status.code == 2)
    assert errors == sorted(truth["trace_ids"]["error"]) and errors
    assert sum(1 for s in spans if s.name == "reco.click") == truth["clicks"]
