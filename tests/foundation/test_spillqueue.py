"""The disk queue on its own: order, byte limit, restart, torn tail, corrupt records, file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from processor.spillqueue import SpillFull, SpillQueue

SIGNALS = ("traces", "metrics", "logs")


def payloads(count: int, size: int = 300) -> list[tuple[str, bytes, int]]:
    """Distinct requests of mixed signals (content varies with the index so a mix-up is visible)."""
    return [(SIGNALS[i // 2 % 3], (f"request-{i}:".encode() * size)[:size], i % 7 + 1) for i in range(count)]


def drain(queue: SpillQueue, batch_bytes: int = 1 << 20) -> list[tuple[str, bytes, int]]:
    out = []
    while (batch := queue.read(batch_bytes)) is not None:
        records, ticket = batch
        out += [(r.signal, r.payload, r.items) for r in records]
        queue.ack(ticket)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_records_come_back_in_order_across_segments(tmp_path: Path, fsync: str) -> None:
    sent = payloads(200)
    queue = SpillQueue(tmp_path / "q", 1 << 20, fsync, segment_bytes=8 << 10)
    for signal, payload, items in sent:
        queue.append(signal, payload, items)
    assert queue.pending == len(sent)
    assert len(segments(tmp_path / "q")) > 3
    assert drain(queue) == sent
    assert queue.pending == 0 and queue.disk_bytes == 0 and segments(tmp_path / "q") == []
    queue.close()


def test_a_read_joins_one_signal_up_to_the_byte_limit(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path / "q", 1 << 20, "never")
    sent = [("traces", b"a" * 100, 1), ("traces", b"b" * 100, 1), ("traces", b"c" * 100, 1),
            ("logs", b"d" * 100, 2)]
    for record in sent:
        queue.append(*record)
    first = queue.read(250)
    assert first is not None
    assert [r.payload for r in first[0]] == [b"a" * 100, b"b" * 100]  # a third would pass 250 bytes
    second = queue.read(10)  # a record bigger than the limit still comes out, alone
    assert second is not None and [r.payload for r in second[0]] == [b"c" * 100]
    third = queue.read(1 << 20)
    assert third is not None and [(r.signal, r.items) for r in third[0]] == [("logs", 2)]
    queue.close()


def test_the_byte_limit_refuses_and_force_overshoots_by_one_record(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path / "q", 4096, "never")
    accepted = 0
    with pytest.raises(SpillFull):
        for _ in range(100):
            queue.append("traces", b"x" * 500, 1)
            accepted += 1
    assert queue.disk_bytes <= 4096 and accepted == 4096 // (500 + 13)
    assert queue.has_room()
    queue.append("traces", b"y" * 500, 1, force=True)
    assert queue.disk_bytes > 4096 and not queue.has_room()
    assert len(drain(queue)) == accepted + 1
    assert queue.has_room()
    queue.close()


def test_restart_resumes_after_the_last_acknowledged_record(tmp_path: Path) -> None:
    sent = payloads(60)
    queue = SpillQueue(tmp_path / "q", 1 << 20, "always", segment_bytes=4 << 10)
    for record in sent:
        queue.append(*record)
    delivered = []
    for _ in range(5):  # acknowledge some batches, then read one more and "crash" before its ack
        batch = queue.read(2000)
        assert batch is not None
        delivered += [(r.signal, r.payload, r.items) for r in batch[0]]
        queue.ack(batch[1])
    unacked = queue.read(2000)
    assert unacked is not None
    queue.close()

    reopened = SpillQueue(tmp_path / "q", 1 << 20, "always", segment_bytes=4 << 10)
    assert reopened.pending == len(sent) - len(delivered)
    more = payloads(63)[60:]
    for record in more:  # appended after the old records, delivered after them
        reopened.append(*record)
    assert delivered + drain(reopened) == sent + more
    reopened.close()


def test_a_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    counted: dict[str, int] = {}
    sent = payloads(10)
    queue = SpillQueue(tmp_path / "q", 1 << 20, "never")
    for record in sent:
        queue.append(*record)
    queue.close()
    last = segments(tmp_path / "q")[-1]
    with open(last, "r+b") as f:  # the process died half way through writing the last record
        f.truncate(last.stat().st_size - 100)

    reopened = SpillQueue(tmp_path / "q", 1 << 20, "never",
                          on_count=lambda op, n: counted.__setitem__(op, counted.get(op, 0) + n))
    assert counted == {"corrupt": 1}
    assert reopened.pending == 9
    reopened.append("logs", b"after restart", 1)
    assert drain(reopened) == sent[:9] + [("logs", b"after restart", 1)]
    assert counted == {"corrupt": 1, "written": 1, "delivered": 10}
    reopened.close()


def test_a_damaged_record_is_skipped_and_counted_never_delivered(tmp_path: Path) -> None:
    counted: dict[str, int] = {}
    sent = payloads(5)
    queue = SpillQueue(tmp_path / "q", 1 << 20, "never",
                       on_count=lambda op, n: counted.__setitem__(op, counted.get(op, 0) + n))
    for record in sent:
        queue.append(*record)
    segment = segments(tmp_path / "q")[0]
    data = bytearray(segment.read_bytes())
    data[(13 + 300) * 2 + 13 + 50] ^= 0xFF  # flip a byte inside the third record's payload
    segment.write_bytes(bytes(data))
    assert drain(queue) == sent[:2] + sent[3:]
    assert counted == {"written": 5, "corrupt": 1, "delivered": 4}
    queue.close()


def test_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    directory.mkdir(mode=0o755)
    queue = SpillQueue(directory, 1 << 20, "interval", segment_bytes=1024)
    for record in payloads(10):
        queue.append(*record)
    queue.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert len(files) > 2
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def test_an_unknown_fsync_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        SpillQueue(tmp_path / "q", 1 << 20, "sometimes")
    assert not os.path.exists(tmp_path / "q")


def test_segments_written_before_the_shared_segment_log_are_read(tmp_path: Path) -> None:
    """The framing moved to processor/segmentlog.py without changing a byte: a segment as the spill queue wrote it
    before (`<len u32><crc32(tag + items + payload) u32><tag u8><items u32><payload>`) is delivered as it was."""
    import struct
    import zlib

    sent = payloads(5)
    records = b""
    for signal, payload, items in sent:
        tag = {"traces": 1, "metrics": 2, "logs": 3}[signal]
        crc = zlib.crc32(payload, zlib.crc32(struct.pack("<BI", tag, items)))
        records += struct.pack("<IIBI", len(payload), crc, tag, items) + payload
    directory = tmp_path / "q"
    directory.mkdir(mode=0o700)
    (directory / f"{1:020d}.seg").write_bytes(records)
    queue = SpillQueue(directory, 1 << 20, "never")
    assert drain(queue) == sent
    queue.close()
