"""The tail-sampling write-ahead log on a real stage: what a crashed stage logged is decided by the next one."""

from __future__ import annotations

import random
import stat
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sampling_helpers import Harness

from bench.sampling_workload import all_spans, log_request, make_trace, make_traces, to_requests
from processor.config_node import ConfigError
from processor.sampling.wal import MAGIC, segment_files

WAIT = {"root_grace": "2s", "decision_wait": "10s"}


def sent(harness: Harness) -> Counter[bytes]:
    """Spans per trace id the stage sent on (requests may be messages or serialized: the byte path)."""
    requests = [ExportTraceServiceRequest.FromString(r) if isinstance(r, bytes) else r for r in harness.traces]
    return Counter(s.trace_id for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans)


def crash(harness: Harness) -> None:
    """What kill -9 leaves behind: the segments as written (page cache survives a process), no clean close."""
    wal = harness.stage.wal.wal
    assert wal is not None
    wal.close(clean=False)
    harness.stage.wal.wal = None


def wal_harness(directory: Path, **wal: object) -> Harness:
    return Harness(**WAIT, wal={"dir": str(directory), **wal})


def mixed_traces(seed: int, count: int) -> list:
    rng = random.Random(seed)
    traces = make_traces(seed=seed, count=count, special_fraction=0.0)
    traces += [make_trace(rng, "error") for _ in range(count // 10)]
    rng.shuffle(traces)
    return traces


def reference_kept(traces: list) -> Counter[bytes]:
    """What a hop that never crashed sends on for the same traces."""
    ref = Harness(**WAIT)
    for request in to_requests(all_spans(traces), per_request=200):
        ref.send(request)
    ref.advance(3)
    return sent(ref)


def test_crashed_stage_is_replayed_and_decided_like_without_a_crash(tmp_path: Path) -> None:
    traces = mixed_traces(1, 400)
    requests = to_requests(all_spans(traces), per_request=200)
    first = wal_harness(tmp_path / "wal")
    half = len(requests) // 2
    for request in requests[:half]:
        first.send(request)
    first.advance(2.5)  # the first half is decided (and handed on) before the crash
    for request in requests[half:]:
        first.send(request)
    buffered = first.stage.buffer_spans()
    assert buffered > 0
    crash(first)

    second = wal_harness(tmp_path / "wal")
    assert second.metric("recohop_wal_replayed_spans_total") >= buffered
    assert second.stage.buffer_spans() == buffered  # undecided traces are buffered again, decided ones are not
    second.advance(3)  # decided by the normal timers (root_grace)
    kept = sent(first) | sent(second)  # union: a kept trace may be sent by both
    assert kept == reference_kept(traces)
    errors = {t.trace_id: len(t.spans) for t in traces if t.kind == "error"}
    assert {tid: kept[tid] for tid in errors} == errors


def test_logs_are_replayed_with_their_trace(tmp_path: Path) -> None:
    rng = random.Random(5)
    trace = make_trace(rng, "ordinary")
    first = wal_harness(tmp_path / "wal")
    first.send(to_requests(trace.spans)[0])
    first.send_logs(log_request([(trace.trace_id, 17, "scoring degraded")]))  # ERROR: error-logs keeps it
    crash(first)
    second = wal_harness(tmp_path / "wal")
    assert second.metric("recohop_wal_replayed_log_records_total") == 1
    second.advance(3)
    assert sent(second) == {trace.trace_id: len(trace.spans)}
    assert [lr.body.string_value for lr in second.out_logs()] == ["scoring degraded"]


def test_clean_shutdown_leaves_nothing_to_replay(tmp_path: Path) -> None:
    traces = mixed_traces(2, 100)
    first = wal_harness(tmp_path / "wal")
    for request in to_requests(all_spans(traces), per_request=200):
        first.send(request)
    first.shutdown()
    assert segment_files(tmp_path / "wal") == []
    second = wal_harness(tmp_path / "wal")
    assert second.metric("recohop_wal_replayed_spans_total") == 0
    second.advance(11)
    assert not sent(second)


def test_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    rng = random.Random(3)
    kept = make_trace(rng, "error")
    torn = make_trace(rng, "error")
    first = wal_harness(tmp_path / "wal")
    first.send(to_requests(kept.spans)[0])
    first.send(to_requests(torn.spans)[0])
    crash(first)
    (_, segment), = segment_files(tmp_path / "wal")
    data = segment.read_bytes()
    segment.write_bytes(data[:-40])  # kill -9 in the middle of writing the last record
    second = wal_harness(tmp_path / "wal")
    assert second.metric("recohop_wal_corrupt_records_total") == 1
    second.advance(3)
    assert sent(second) == {kept.trace_id: len(kept.spans)}


def test_record_failing_its_checksum_is_skipped_and_counted(tmp_path: Path) -> None:
    rng = random.Random(4)
    trace = make_trace(rng, "error")
    first = wal_harness(tmp_path / "wal")
    first.send(to_requests(trace.spans)[0])
    crash(first)
    (_, segment), = segment_files(tmp_path / "wal")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    second = wal_harness(tmp_path / "wal")
    assert second.metric("recohop_wal_corrupt_records_total") == 1
    assert second.metric("recohop_wal_replayed_spans_total") == 0


def test_compaction_keeps_only_what_is_live(tmp_path: Path) -> None:
    traces = mixed_traces(6, 600)
    requests = to_requests(all_spans(traces), per_request=200)
    first = wal_harness(tmp_path / "wal", compact_interval="3s")
    for request in requests:
        first.send(request)
    first.advance(2.5)  # all decided
    late = mixed_traces(7, 50)
    for request in to_requests(all_spans(late), per_request=200):
        first.send(request)
    wal = first.stage.wal.wal
    assert wal is not None
    before = wal.size
    first.advance(0.6)  # past compact_interval, before root_grace of the late ones: one fresh segment with the 50 buffered traces + decisions
    assert first.metric("recohop_wal_compactions_total") >= 1
    files = segment_files(tmp_path / "wal")
    assert len(files) == 1
    on_disk = files[0][1].stat().st_size
    assert on_disk == wal.size < before
    assert first.metric("recohop_wal_bytes") == on_disk
    buffered = first.stage.buffer_spans()
    assert buffered == len(all_spans(late))
    crash(first)
    # A crash between writing the new segment and deleting the old ones, and one before its rename: the
    # older segment and the unfinished file must not be replayed on top of the snapshot.
    snapshot = files[0][1]
    (tmp_path / "wal" / "seg-00000000.wal").write_bytes(snapshot.read_bytes())
    (tmp_path / "wal" / "seg-99999999.tmp").write_bytes(snapshot.read_bytes())

    second = wal_harness(tmp_path / "wal")
    assert second.stage.buffer_spans() == buffered
    assert [path.name for _, path in segment_files(tmp_path / "wal")] == [snapshot.name]
    second.advance(3)
    assert sent(second) == reference_kept(late)
    # Decisions survive compaction: a late span of a trace decided before the crash follows its decision.
    error = next(t for t in traces if t.kind == "error")
    straggler = error.spans[0].__class__()
    straggler.CopyFrom(error.spans[0])
    straggler.span_id = b"\x01" * 8
    assert second.send(to_requests([straggler])[0])  # kept at once, not buffered again


def test_files_are_private(tmp_path: Path) -> None:
    first = wal_harness(tmp_path / "wal")
    first.send(to_requests(make_trace(random.Random(8)).spans)[0])
    assert stat.S_IMODE((tmp_path / "wal").stat().st_mode) == 0o700
    files = segment_files(tmp_path / "wal")
    assert files
    for _, path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().startswith(MAGIC)


@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_fsync_modes(tmp_path: Path, mode: str) -> None:
    first = wal_harness(tmp_path / "wal", fsync=mode, fsync_interval="1s")
    traces = mixed_traces(9, 50)
    requests = to_requests(all_spans(traces), per_request=50)
    for request in requests:
        first.send(request)
    first.advance(3.05)  # ~3 fsync intervals of flush ticks
    fsyncs = first.metric("recohop_wal_fsyncs_total")
    written = first.metric("recohop_wal_records_written_total", {"kind": "traces"})
    assert written == len(requests)
    if mode == "always":
        assert fsyncs >= written
    elif mode == "interval":
        assert 1 <= fsyncs <= 4
    else:
        assert fsyncs == 0
    crash(first)
    second = wal_harness(tmp_path / "wal", fsync=mode)
    assert second.metric("recohop_wal_replayed_spans_total") == len(all_spans(traces))


def test_over_budget_is_counted_and_serving_goes_on(tmp_path: Path) -> None:
    first = wal_harness(tmp_path / "wal", max_bytes="1MiB")
    traces = mixed_traces(10, 3000)  # ~2 MB of spans that all stay buffered (root_grace 2s)
    for request in to_requests(all_spans(traces), per_request=300):
        first.send(request)
    skipped = first.metric("recohop_wal_over_budget_records_total")
    assert skipped > 0
    assert first.metric("recohop_wal_compactions_total") == 0  # all of it is live: rewriting would free nothing
    assert sum(path.stat().st_size for _, path in segment_files(tmp_path / "wal")) <= 1 << 20
    assert first.stage.buffer_spans() == len(all_spans(traces))  # nothing refused or lost in memory
    first.advance(3)  # all decided: now compaction frees the log and logging resumes
    assert sent(first) == reference_kept(traces)
    assert first.metric("recohop_wal_compactions_total") >= 1
    more = mixed_traces(11, 50)
    for request in to_requests(all_spans(more), per_request=300):
        first.send(request)
    assert first.metric("recohop_wal_over_budget_records_total") == skipped
    crash(first)
    second = wal_harness(tmp_path / "wal", max_bytes="1MiB")
    assert second.metric("recohop_wal_replayed_spans_total") == len(all_spans(more))


def test_a_second_hop_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    wal_harness(tmp_path / "wal")
    with pytest.raises(ConfigError, match=r"<test>: wal\.dir: expected a directory no other running hop uses"):
        wal_harness(tmp_path / "wal")


@pytest.mark.parametrize(("wal", "message"), [
    ({"fsync": "sometimes"}, r"wal\.fsync: expected one of always, interval, never"),
    ({"max_bytes": "10KiB"}, r"wal\.max_bytes: expected a size of at least 1MiB"),
    ({"fsync_every": "1s"}, r"wal\.fsync_every: expected a known key"),
])
def test_bad_wal_config_names_the_key(tmp_path: Path, wal: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Harness(wal={"dir": str(tmp_path / "wal"), **wal})
    with pytest.raises(ConfigError, match=r"wal\.dir: expected the path"):
        Harness(wal={})


def test_segments_written_before_the_shared_segment_log_are_replayed(tmp_path: Path) -> None:
    """The framing moved to processor/segmentlog.py without changing a byte: a segment as the log wrote it before
    (magic, then `<len u32><crc32(kind + payload) u32><kind u8><payload>`) is replayed as it was; one without the
    magic is refused whole with a clear reason, never read as records."""
    import struct
    import zlib

    rng = random.Random(8)
    trace = make_trace(rng, "error")
    payload = to_requests(trace.spans)[0].SerializeToString()
    record = struct.pack("<IIB", len(payload), zlib.crc32(payload, zlib.crc32(b"\x01")), 1) + payload
    (tmp_path / "wal").mkdir(mode=0o700)
    (tmp_path / "wal" / "seg-00000001.wal").write_bytes(MAGIC + record)
    h = wal_harness(tmp_path / "wal")
    assert h.metric("recohop_wal_replayed_spans_total") == len(trace.spans)
    h.advance(3)
    assert sent(h) == {trace.trace_id: len(trace.spans)}

    (tmp_path / "other").mkdir(mode=0o700)
    (tmp_path / "other" / "seg-00000001.wal").write_bytes(b"RHWAL00\n" + record)
    h = wal_harness(tmp_path / "other")
    assert h.metric("recohop_wal_corrupt_records_total") == 1
    assert h.metric("recohop_wal_replayed_spans_total") == 0
