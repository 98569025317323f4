"""`python -m bench peer` end to end with very short windows: the collector and recohop rows, the binding table
and the agreement runs land in the JSON and the table. Nothing about speed is asserted; what must hold at any
speed is asserted: both pipelines keep every special trace of the agreement workload, and recohop's 1 %
baseline (and the collector's with the usetracestate gate) is exactly the consistent-probability set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peer, procs
from bench.workload import TraceIdRewriter, generate

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "RECOHOP_REQUIRE_OTELCOL"


def _require_otelcol() -> None:
    if procs.otelcol_binary() is not None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail("the collector is not built: run `make otelcol`")
    pytest.skip("the collector is not built: run `make otelcol`")


def _trace_ids(raw: bytes) -> set[bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return {span.trace_id for rs in ExportTraceServiceRequest.FromString(raw).resource_spans
            for ss in rs.scope_spans for span in ss.spans}


def test_replayed_ids_are_fresh_in_both_halves() -> None:
    """The collector's tail-sampling decision cache is keyed by bytes 8-15 of the trace id: a replay that only
    changed the first bytes was answered from the first pass's decisions, never buffered. The peer client
    rewrites both halves; bytes 4-11 (the capture sink's key for special traces) stay the original's."""
    raw = generate(1, 800, 3).requests[0]
    original = _trace_ids(raw)
    rewriter = TraceIdRewriter(raw, fresh_right_half=True)
    right_halves: set[bytes] = set()
    replays = 50
    for generation in range(replays):
        ids = _trace_ids(rewriter.replay(generation))
        assert {t[4:12] for t in ids} == {t[4:12] for t in original}
        right_halves |= {t[8:] for t in ids}
    assert len(right_halves) == replays * len(original)
    # Without the option (`python -m bench all`) the right half never changes; generation 0's mask is zero.
    plain = TraceIdRewriter(raw)
    assert rewriter.replay(0) == plain.replay(0)
    assert {t[8:] for t in _trace_ids(plain.replay(7))} == {t[8:] for t in original}


def test_render_otelcol_fills_every_placeholder_and_keeps_env(tmp_path: Path) -> None:
    values = {"otlp_endpoint": "127.0.0.1:1", "health_endpoint": "127.0.0.1:2", "telemetry_port": 3,
              "sink_endpoint": "127.0.0.1:4", "decision_wait": "10s", "root_grace": "2s", "num_traces": 5,
              "expected_new_traces_per_sec": 1, "block_on_overflow": "false", "decision_cache_half": 7}
    text = peer.render_otelcol(peer.OTELCOL_FULL, values)
    assert "${env:PEER_HMAC_KEY}" in text  # the collector reads the key from its environment
    assert "num_traces: 5" in text and "decision_wait_after_root_received: 2s" in text
    with pytest.raises(KeyError, match="num_traces"):
        peer.render_otelcol(peer.OTELCOL_FULL, {k: v for k, v in values.items() if k != "num_traces"})


def test_collector_accepts_the_peer_configs(tmp_path: Path) -> None:
    _require_otelcol()
    binary = procs.otelcol_binary()
    assert binary is not None
    values = {"otlp_endpoint": "127.0.0.1:14317", "health_endpoint": "127.0.0.1:14133", "telemetry_port": 14888,
              "sink_endpoint": "127.0.0.1:14999", "decision_wait": "10s", "root_grace": "2s",
              "num_traces": 1000, "expected_new_traces_per_sec": 100, "block_on_overflow": "false",
              "decision_cache_half": 100}
    for template in (peer.OTELCOL_FULL, peer.OTELCOL_PASSTHROUGH):
        config = tmp_path / template.name
        config.write_text(peer.render_otelcol(template, values))
        done = subprocess.run([str(binary), "validate", "--config", str(config)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PEER_HMAC_KEY": "k" * 40})
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_peer_smoke(tmp_path: Path) -> None:
    _require_otelcol()
    out = tmp_path / "out" / "peer.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("BENCH_PROFILE_HOP", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "peer", "--duration", "1.5", "--warmup", "1", "--decision-wait", "3",
         "--root-grace", "1", "--requests", "8", "--agreement-requests", "12", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "budgets fit decision_wait" in proc.stdout and "budget binding" in proc.stdout

    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    for name in ("otelcol_passthrough", "recohop_passthrough", "otelcol_full", "recohop_full",
                 "otelcol_full_binding", "otelcol_full_binding_block", "recohop_full_binding"):
        assert name in rows, (name, result["notes"])
        assert not rows[name].get("skipped"), (name, rows[name]["skipped"], result["notes"])
        assert rows[name]["spans_per_s"] > 0 and rows[name]["cpu_s_per_million_spans"] > 0
    for name in ("otelcol_full", "recohop_full"):
        assert rows[name]["sampler"]["decided"] > 0, rows[name]
        assert rows[name]["sampler"]["forced"] == 0, rows[name]  # the fitting budget never binds
        # How many traces are decided inside a few-second smoke window depends on the machine: only "some".
        assert rows[name]["sampler"]["handled_per_trace"] > 0, rows[name]
    assert rows["recohop_full_binding"]["sampler"]["forced"] > 0
    assert rows["recohop_full_binding"]["capture"]["kept_traces"] > 0
    assert set(result["targets"]) >= {"full_spans_per_cpu_s_ratio", "recohop_full_over_passthrough"}

    agreement = result["agreement"]
    assert sum(agreement["special"].values()) > 0
    runs = agreement["runs"]
    assert set(runs) == {"recohop", "otelcol", "otelcol_usetracestate"}
    for label, run in runs.items():
        assert run["missed_special"] == 0, (label, run)
        assert run["unknown_ids"] == 0, (label, run)
    assert runs["recohop"]["baseline_equal_consistent_rule"], runs["recohop"]
    assert runs["otelcol_usetracestate"]["baseline_equal_consistent_rule"], runs["otelcol_usetracestate"]
