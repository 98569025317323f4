"""The benchmark workload: recommender-shaped traces, a length-delimited file any capture can use, and fresh
trace ids per replay without re-encoding."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from bench.workload import TraceIdRewriter, generate, load_workload, read_requests, write_workload


def _spans(raw: bytes) -> list:
    req = ExportTraceServiceRequest.FromString(raw)
    return [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_generated_traces_have_the_recommender_shape() -> None:
    workload = generate(requests=12, spans_per_request=800, seed=3)
    assert all(800 <= n < 820 for n in workload.spans)
    traces: dict[bytes, list] = defaultdict(list)
    for raw in workload.requests:
        for span in _spans(raw):
            traces[span.trace_id].append(span)
    generate_traces = [t for t in traces.values() if any(s.name == "reco.generate" for s in t)]
    assert all(8 <= len(t) <= 12 for t in generate_traces)
    special = 0
    for spans in generate_traces:
        root = next(s for s in spans if s.name == "reco.generate")
        ids = {s.span_id for s in spans}
        assert all(s.parent_span_id in ids for s in spans if s is not root)
        keys = {kv.key for kv in root.attributes}
        assert {"user.id", "user.email", "client.address", "reco.placement", "experiment.variant"} <= keys
        attrs = {kv.key: kv.value for kv in root.attributes}
        slow = root.end_time_unix_nano - root.start_time_unix_nano > 500_000_000
        special += slow or attrs["reco.fallback"].bool_value or root.status.code == Status.STATUS_CODE_ERROR
    assert 0.02 <= special / len(generate_traces) <= 0.07


def test_workload_file_round_trip(tmp_path: Path) -> None:
    workload = generate(requests=3, spans_per_request=100, seed=1)
    path = tmp_path / "capture.bin"
    write_workload(path, workload.requests)
    assert read_requests(path) == workload.requests
    loaded = load_workload(path)
    assert loaded.spans == workload.spans and loaded.traces == workload.traces


def test_replay_gives_fresh_trace_ids_keeping_traces_whole() -> None:
    raw = generate(requests=1, spans_per_request=400, seed=5, click_rate=0.3).requests[0]
    before = _spans(raw)
    after = _spans(TraceIdRewriter(raw).replay(0x01020304))
    assert len(after) == len(before)
    mapping = {}
    for old, new in zip(before, after, strict=True):
        assert new.trace_id[:4] == bytes([1, 2, 3, 4]) and new.trace_id[4:] == old.trace_id[4:]
        assert mapping.setdefault(old.trace_id, new.trace_id) == new.trace_id
        for old_link, new_link in zip(old.links, new.links, strict=True):
            assert new_link.trace_id[:4] == bytes([1, 2, 3, 4])
            assert new_link.trace_id[4:] == old_link.trace_id[4:]
