"""`recohop replay`: a dry run over JSON-lines and binary captures reports per-policy keeps without sending."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from google.protobuf import json_format
from sampling_helpers import DEFAULT_POLICIES

from bench.sampling_workload import all_spans, log_request, make_trace, make_traces, to_requests
from processor.cli import main
from processor.sampling.wire import varint


def capture_traces():  # noqa: ANN201 - workload traces
    rng = random.Random(78)  # not 77: the same seed would repeat trace ids
    traces = make_traces(seed=77, count=1500, special_fraction=0.0)
    return traces + [make_trace(rng, "error") for _ in range(7)] + [make_trace(rng, "fallback") for _ in range(5)]


def run_replay(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    assert main(["replay", "--policies", str(DEFAULT_POLICIES), str(path)]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("keep", "drop"):
            rows[parts[1]] = parts
        elif parts:
            rows[parts[0].rstrip(":")] = parts
    return rows


def test_replay_json_lines_with_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces = capture_traces()
    path = tmp_path / "capture.jsonl"
    ordinary = traces[0]
    with path.open("w") as f:
        for request in to_requests(all_spans(traces), per_request=400):
            f.write(json_format.MessageToJson(request, indent=None) + "\n")
        logs = log_request([(traces[-1].trace_id, 9, "fallback served"), (ordinary.trace_id, 17, "boom"),
                            (b"", 9, "plain")])
        f.write(json_format.MessageToJson(logs, indent=None) + "\n")
    rows = run_replay(path, capsys)
    assert rows["errors"][2:4] == ["7", str(sum(len(t.spans) for t in traces[-12:-5]))]
    assert rows["fallback"][2:5] == ["5", str(sum(len(t.spans) for t in traces[-5:])), "1"]
    assert rows["error-logs"][2] == "1" and rows["error-logs"][4] == "1"
    expected = 13 + int(rows.get("baseline", ["", "", "0"])[2])
    assert rows["kept"][1] == str(expected)
    assert rows["capture"][2] == "1512"  # traces
    assert "estimated" in rows and int(rows["estimated"][2]) > 0


def test_replay_binary_length_delimited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces = capture_traces()
    path = tmp_path / "capture.bin"
    with path.open("wb") as f:
        for request in to_requests(all_spans(traces), per_request=400):
            payload = request.SerializeToString()
            f.write(varint(len(payload)) + payload)
    rows = run_replay(path, capsys)
    assert rows["errors"][2] == "7" and rows["fallback"][2] == "5"
    kept = int(rows["kept"][1])
    assert rows["ratio"][3] == f"{kept / 1512:.4f}"  # "keep ratio (traces): x"


def test_replay_truncated_capture_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.bin"
    payload = to_requests(make_trace(random.Random(1)).spans)[0].SerializeToString()
    path.write_bytes(varint(len(payload) + 50) + payload)
    assert main(["replay", "--policies", str(DEFAULT_POLICIES), str(path)]) == 2
    assert "file truncated" in capsys.readouterr().err
