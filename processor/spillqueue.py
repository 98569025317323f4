"""An append-only on-disk FIFO of serialized export requests: where the exporter spills when its memory queue is
full, so a long downstream outage costs disk space instead of data, and a restart (even after kill -9) resumes
delivery where it stopped.

Layout: a directory (0700) of segment files `<id>.seg` (0600, ids ascending), framed by `processor/segmentlog.py`
(shared with the tail-sampling write-ahead log): each a run of records
`<payload length u32><crc32 u32><signal tag u8><items u32><payload>` (the item count is the record's meta). The CRC
covers tag, items and payload, so a torn or damaged record is skipped and counted, never delivered half. `cursor` (0600) holds the position of the
oldest record not yet acknowledged; segments wholly before it are deleted. Delivery is at least once: records
read but not acknowledged when the process dies are read again on the next start.

Not thread-safe on its own beyond one internal lock: callers (the exporter) serialize appends and reads.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from processor.segmentlog import Framing, create_segment, private_dir, segment_ids, sync_dir, write_all

FSYNC_POLICIES = ("always", "interval", "never")
TAGS = {"traces": 1, "metrics": 2, "logs": 3}
SIGNAL_OF_TAG = {tag: signal for signal, tag in TAGS.items()}

_ITEMS = struct.Struct("<I")  # the record's meta: items in the request
FRAMING = Framing(SIGNAL_OF_TAG, meta_size=_ITEMS.size)
_CURSOR = struct.Struct("<QQ")  # segment id, offset; followed by the crc32 of those 16 bytes
_SEGMENT_SUFFIX = ".seg"


@dataclass
class SpillRecord:
    signal: str
    payload: bytes
    items: int


@dataclass
class _InFlight:
    start: tuple[int, int]
    end: tuple[int, int]
    records: int
    done: bool = False


class SpillFull(Exception):
    """The disk queue's byte budget is used up."""


class SpillQueue:
    """FIFO of export requests on disk, bounded by `max_bytes` of segment files.

    `on_count(op, n)` is told about records `written`, `delivered` (acknowledged) and `corrupt` (skipped)."""

    def __init__(self, directory: str | Path, max_bytes: int, fsync: str = "interval",
                 segment_bytes: int | None = None, sync_interval: float = 1.0,
                 on_count: Callable[[str, int], None] | None = None) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.fsync = fsync
        # Small segments waste little disk on delivered-but-not-yet-deleted records; big ones mean fewer files.
        self.segment_bytes = segment_bytes or min(64 << 20, max(64 << 10, max_bytes // 16))
        self._count = on_count or (lambda _op, _n: None)
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # live segment id -> bytes, ascending
        self._disk_bytes = 0
        self._pending = 0  # records written and not yet read
        self._inflight: deque[_InFlight] = deque()
        self._write_id: int | None = None
        self._write_fd: int | None = None
        self._read_id = 0
        self._read_offset = 0
        self._read_fd: int | None = None
        self._dirty = False
        self._closed = threading.Event()
        private_dir(self.dir)
        self._cursor_fd = os.open(self.dir / "cursor", os.O_RDWR | os.O_CREAT, 0o600)
        self._recover()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_every, args=(sync_interval,),
                                            name="recohop-spill-sync", daemon=True)
            self._syncer.start()

    # --- state ---
    @property
    def pending(self) -> int:
        """Records on disk not yet handed out by `read` (0 means the queue has drained)."""
        return self._pending

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes  # a plain int: read without the lock by receiver threads (has_room)

    def has_room(self) -> bool:
        return self.disk_bytes < self.max_bytes

    # --- writing ---
    def append(self, signal: str, payload: bytes, items: int, force: bool = False) -> None:
        """Append one request. `force` (data already accepted from a client) may overshoot the budget by this
        one record rather than lose it; otherwise a record that does not fit raises SpillFull."""
        tag = TAGS[signal]
        header = FRAMING.header(tag, payload, _ITEMS.pack(items))
        size = len(header) + len(payload)
        with self._lock:
            if not force and self._disk_bytes + size > self.max_bytes:
                raise SpillFull()
            fd = self._writable_segment()
            write_all(fd, (header, payload))
            assert self._write_id is not None
            self._sizes[self._write_id] += size
            self._disk_bytes += size
            self._pending += 1
            if self.fsync == "always":
                os.fdatasync(fd)
            else:
                self._dirty = True
        self._count("written", 1)

    def _writable_segment(self) -> int:
        if self._write_fd is not None and self._sizes[self._write_id] < self.segment_bytes:  # type: ignore[index]
            return self._write_fd
        if self._write_fd is not None:
            if self.fsync != "never":
                os.fdatasync(self._write_fd)
            os.close(self._write_fd)
        self._write_id = max([*self._sizes, self._read_id - 1, (self._write_id or 0)]) + 1
        path = self._segment_path(self._write_id)
        self._write_fd = create_segment(path, FRAMING, exclusive=False)
        self._sizes[self._write_id] = 0
        if self.fsync != "never":
            self._sync_dir()
        return self._write_fd

    # --- reading ---
    def read(self, max_bytes: int) -> tuple[list[SpillRecord], object] | None:
        """The oldest unread records sharing one signal, up to `max_bytes` of payload (always at least one), and
        a ticket to `ack` once they are settled. None when nothing readable is left (corrupt ones are skipped)."""
        with self._lock:
            records: list[SpillRecord] = []
            size = 0
            start = (self._read_id, self._read_offset)
            corrupt = 0
            while self._pending:
                fd = self._reader()
                header = os.pread(fd, FRAMING.head_size, self._read_offset)
                length, crc, tag, meta = FRAMING.unpack(header)
                signal = SIGNAL_OF_TAG.get(tag)
                if records and (signal != records[0].signal or size + length > max_bytes):
                    break
                payload = os.pread(fd, length, self._read_offset + FRAMING.head_size)
                self._read_offset += FRAMING.head_size + length
                self._pending -= 1
                if signal is None or len(payload) != length or not FRAMING.intact(crc, tag, meta, payload):
                    corrupt += 1
                    continue
                records.append(SpillRecord(signal, payload, _ITEMS.unpack(meta)[0]))
                size += length
            end = (self._read_id, self._read_offset)
            if not records and start == end:
                return None
            ticket = _InFlight(start, end, len(records))
            self._inflight.append(ticket)
        if corrupt:
            self._count("corrupt", corrupt)
        if not records:
            self.ack(ticket)
            return None
        return records, ticket

    def _reader(self) -> int:
        """The fd of the segment holding the next unread record (moving past fully read segments)."""
        while self._read_offset >= self._sizes.get(self._read_id, 0):
            later = [i for i in self._sizes if i > self._read_id]
            if not later:
                break
            if self._read_fd is not None:
                os.close(self._read_fd)
                self._read_fd = None
            self._read_id, self._read_offset = min(later), 0
        if self._read_fd is None:
            self._read_fd = os.open(self._segment_path(self._read_id), os.O_RDONLY)
        return self._read_fd

    def ack(self, ticket: object) -> None:
        """Mark a `read` batch settled; the cursor moves over the settled prefix and spent segments go."""
        assert isinstance(ticket, _InFlight)
        with self._lock:
            if self._closed.is_set():
                return  # a consumer outliving shutdown: the record stays on disk for the next start
            ticket.done = True
            moved = False
            while self._inflight and self._inflight[0].done:
                self._inflight.popleft()
                moved = True
            if moved and not self._inflight and not self._pending:
                self._reset_when_drained()
            elif moved:
                head = self._inflight[0].start if self._inflight else (self._read_id, self._read_offset)
                self._write_cursor(*head)
                for segment in [i for i in self._sizes if i < head[0]]:
                    self._drop_segment(segment)
        if ticket.records:
            self._count("delivered", ticket.records)

    def _reset_when_drained(self) -> None:
        """Everything written was settled: delete every segment so disk use returns to zero."""
        for fd in (self._read_fd, self._write_fd):
            if fd is not None:
                os.close(fd)
        self._read_fd = self._write_fd = None
        next_id = max([*self._sizes, self._read_id]) + 1
        for segment in list(self._sizes):
            self._drop_segment(segment)
        self._write_id = None
        self._read_id, self._read_offset = next_id, 0
        self._write_cursor(next_id, 0)

    # --- recovery ---
    def _recover(self) -> None:
        """Find pending records after a restart: start at the cursor, walk record headers to the end, cut a torn
        tail (counted as corrupt). CRCs are checked when records are read."""
        ids = [segment for segment, _path in segment_ids(self.dir, "", _SEGMENT_SUFFIX)]
        cursor = self._read_cursor()
        if cursor is None or (ids and cursor[0] < ids[0]):
            cursor = (ids[0], 0) if ids else (1, 0)
        for segment in ids:
            if segment < cursor[0]:
                self._segment_path(segment).unlink(missing_ok=True)
        ids = [i for i in ids if i >= cursor[0]]
        self._read_id, self._read_offset = (cursor if ids and ids[0] == cursor[0]
                                            else (ids[0] if ids else cursor[0], 0))
        torn = 0
        for segment in ids:
            start = self._read_offset if segment == self._read_id else 0
            records, good_end, size = self._walk(segment, start)
            if good_end < size:
                torn += 1
                os.truncate(self._segment_path(segment), good_end)
            self._pending += records
            self._sizes[segment] = good_end
            self._disk_bytes += good_end
        if torn:
            self._count("corrupt", torn)

    def _walk(self, segment: int, offset: int) -> tuple[int, int, int]:
        """(whole records from `offset`, end of the last whole record, file size)."""
        path = self._segment_path(segment)
        size = path.stat().st_size
        offset = min(offset, size)
        records = 0
        # Framing only (CRCs are checked by `read`, which skips a damaged record): a torn tail ends the walk.
        for frame in FRAMING.read_segment(path, lambda _why: None, verify=False, at=offset):
            offset = frame.end
            records += 1
        return records, offset, size

    # --- cursor and files ---
    def _read_cursor(self) -> tuple[int, int] | None:
        raw = os.pread(self._cursor_fd, _CURSOR.size + 4, 0)
        if len(raw) != _CURSOR.size + 4:
            return None
        body, (crc,) = raw[: _CURSOR.size], struct.unpack("<I", raw[_CURSOR.size:])
        if zlib.crc32(body) != crc:
            return None  # a torn cursor: fall back to the oldest segment (at least once)
        segment, offset = _CURSOR.unpack(body)
        return segment, offset

    def _write_cursor(self, segment: int, offset: int) -> None:
        body = _CURSOR.pack(segment, offset)
        os.pwrite(self._cursor_fd, body + struct.pack("<I", zlib.crc32(body)), 0)
        if self.fsync == "always":
            os.fdatasync(self._cursor_fd)
        else:
            self._dirty = True

    def _drop_segment(self, segment: int) -> None:
        if segment == self._read_id and self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        self._disk_bytes -= self._sizes.pop(segment, 0)
        self._segment_path(segment).unlink(missing_ok=True)

    def _segment_path(self, segment: int) -> Path:
        return self.dir / f"{segment:020d}{_SEGMENT_SUFFIX}"

    def _sync_dir(self) -> None:
        sync_dir(self.dir)

    def _sync_every(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.sync()

    def sync(self) -> None:
        """Flush written records and the cursor to disk (the `interval` policy calls this every interval)."""
        with self._lock:
            if not self._dirty:
                return
            if self._write_fd is not None:
                os.fdatasync(self._write_fd)
            os.fdatasync(self._cursor_fd)
            self._dirty = False

    def close(self) -> None:
        self._closed.set()
        if self._syncer is not None:
            self._syncer.join()
        if self.fsync != "never":
            self.sync()
        with self._lock:
            for fd in (self._read_fd, self._write_fd, self._cursor_fd):
                if fd is not None:
                    os.close(fd)
            self._read_fd = self._write_fd = None

