"""Write-ahead log of the tail-sampling buffer, so a hop killed mid-stream (kill -9, OOM, node loss) decides and
sends the traces it had buffered when it restarts.

The stage logs what entered it (after the stages before it, so redaction has already run: no raw PII on disk)
and the decisions it made. On restart the decisions go back into the decision cache first, then the logged
requests go through the stage's own intake: undecided traces are buffered again and decided by the normal
timers; spans of traces decided before the crash follow their decision (kept ones are sent again: at least
once, because the exporter's in-memory queue died with the process).

On disk: a directory (0700) of segment files `seg-<seq>.wal` (0600), framed by `processor/segmentlog.py` (shared
with the exporter's spill queue). A segment is a magic line and records
`<u32 payload length><u32 crc32(kind + payload)><u8 kind><payload>`. A record cut short or failing its CRC
(kill -9 mid-write, a bad disk) ends the reading of that segment and is counted, never fatal. Compaction writes
a fresh segment `seg-<seq>.tmp` holding only what is live (the recent decisions and a snapshot of the buffer),
renames it into place (atomic) and deletes older segments; a segment starting with a SNAPSHOT record makes every
older one obsolete, so a crash during compaction replays either the old segments or the new one, never both.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from processor.clock import SYSTEM_CLOCK
from processor.config_node import Node
from processor.segmentlog import (
    NO_MAGIC,
    Framing,
    create_segment,
    private_dir,
    segment_ids,
    sync_dir,
    write_all,
)

MAGIC = b"RHWAL01\n"
TRACES, LOGS, DECISIONS, SNAPSHOT = 1, 2, 3, 4
KIND_NAMES = {TRACES: "traces", LOGS: "logs", DECISIONS: "decisions", SNAPSHOT: "snapshot"}
FRAMING = Framing(KIND_NAMES, magic=MAGIC)
_HEAD_SIZE = FRAMING.head_size
FSYNC_MODES = ("always", "interval", "never")
SNAPSHOT_RECORD_BYTES = 1 << 20  # buffer snapshots are written in requests of about this size

# (kind, serialized request entry) pieces a snapshot is made of: one ResourceSpans / ResourceLogs (field 1).
Snapshot = Callable[[], Iterable[tuple[int, bytes]]]
Decided = tuple[bytes, bool, str]  # trace id, kept, deciding policy


@dataclass
class WalSettings:
    dir: Path
    fsync: str = "interval"
    fsync_interval: float = 1.0
    max_bytes: int = 512 << 20
    compact_interval: float = 60.0
    keep_decisions: int = 200_000  # recent decisions carried over by compaction (late spans after a restart)


def read_wal_settings(node: Node, keep_decisions: int) -> WalSettings:
    """The stage's `wal:` mapping: `{dir, fsync, fsync_interval, max_bytes, compact_interval}`."""
    d = WalSettings(Path("."))
    directory = node.path_value("dir")
    if directory is None:
        raise node.error("dir", "the path of the write-ahead log's own directory (required)")
    settings = WalSettings(
        dir=directory,
        fsync=node.str("fsync", d.fsync, choices=FSYNC_MODES),
        fsync_interval=node.duration("fsync_interval", d.fsync_interval),
        max_bytes=node.size("max_bytes", d.max_bytes),
        compact_interval=node.duration("compact_interval", d.compact_interval),
        keep_decisions=keep_decisions,
    )
    if settings.max_bytes < 1 << 20:
        raise node.error("max_bytes", "a size of at least 1MiB", settings.max_bytes)
    if settings.compact_interval <= 0:
        raise node.error("compact_interval", "a duration above zero")
    node.done()
    return settings


def encode_decisions(decided: Iterable[Decided]) -> bytes:
    """`<u16 n names>(<u8 len><name>)*` then per decision `<16-byte trace id><u16 name index | kept << 15>`."""
    names: dict[str, int] = {}
    body = bytearray()
    for trace_id, kept, policy in decided:
        index = names.get(policy)
        if index is None:
            index = names[policy] = len(names)
        body += trace_id
        body += (index | (0x8000 if kept else 0)).to_bytes(2, "little")
    head = bytearray(len(names).to_bytes(2, "little"))
    for name in names:
        raw = name.encode()[:255]
        head += bytes((len(raw),)) + raw
    return bytes(head + body)


def decode_decisions(payload: bytes) -> list[Decided]:
    count = int.from_bytes(payload[:2], "little")
    at, names = 2, []
    for _ in range(count):
        n = payload[at]
        names.append(payload[at + 1:at + 1 + n].decode(errors="replace"))
        at += 1 + n
    out = []
    for i in range(at, len(payload) - 17, 18):
        flags = int.from_bytes(payload[i + 16:i + 18], "little")
        if flags & 0x7FFF < len(names):
            out.append((payload[i:i + 16], bool(flags & 0x8000), names[flags & 0x7FFF]))
    return out


def _decisions_in(payload: bytes) -> int:
    count = int.from_bytes(payload[:2], "little")
    at = 2
    for _ in range(count):
        at += 1 + payload[at]
    return (len(payload) - at) // 18


class WalMetrics:
    def __init__(self, registry: Any) -> None:
        self.bytes = Gauge("recohop_wal_bytes", "Bytes of write-ahead log segments on disk", registry=registry)
        written = Counter("recohop_wal_records_written", "Records appended to the write-ahead log", ["kind"],
                          registry=registry)
        self.written = {kind: written.labels(name) for kind, name in KIND_NAMES.items()}
        self.replayed_spans = Counter("recohop_wal_replayed_spans",
                                      "Spans read back from the write-ahead log at start", registry=registry)
        self.replayed_logs = Counter("recohop_wal_replayed_log_records",
                                     "Log records read back from the write-ahead log at start", registry=registry)
        self.corrupt = Counter("recohop_wal_corrupt_records",
                               "Torn or corrupt records skipped while reading the write-ahead log",
                               registry=registry)
        self.over_budget = Counter("recohop_wal_over_budget_records",
                                   "Records not logged because the log was over max_bytes even after compaction "
                                   "(their data would not survive a crash)", registry=registry)
        self.write_errors = Counter("recohop_wal_write_errors",
                                    "Failed writes or compactions of the write-ahead log (disk full, I/O error)",
                                    registry=registry)
        self.fsyncs = Counter("recohop_wal_fsyncs", "fsync calls on write-ahead log segments (per the fsync policy)",
                              registry=registry)
        self.compactions = Counter("recohop_wal_compactions", "Compactions of the write-ahead log",
                                   registry=registry)


def segment_files(directory: Path) -> list[tuple[int, Path]]:
    return segment_ids(directory, "seg-", ".wal")


def read_records(path: Path, on_corrupt: Callable[[str], None]) -> Iterator[tuple[int, bytes]]:
    """The records of one segment, in order; stops at the first torn or corrupt record."""
    def bad(why: str) -> None:
        on_corrupt("segment without the write-ahead log header" if why == NO_MAGIC else why)

    for frame in FRAMING.read_segment(path, bad):
        yield frame.kind, frame.payload


def _record(kind: int, payload: bytes) -> bytes:
    return FRAMING.header(kind, payload)


class WriteAheadLog:
    """Owned by one tail-sampling stage and called under the pipeline lock (no locking of its own)."""

    def __init__(self, settings: WalSettings, registry: Any, log: logging.Logger | None = None,
                 clock: Callable[[], float] = SYSTEM_CLOCK.now) -> None:
        self.settings = settings
        self.dir = settings.dir
        self.log = log or logging.getLogger("recohop")
        self.clock = clock
        self.metrics = WalMetrics(registry)
        private_dir(self.dir)
        self._lock_fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise
        for tmp in self.dir.glob("seg-*.tmp"):  # a compaction that did not finish: the old segments hold it all
            tmp.unlink()
        segments = segment_files(self.dir)
        base = 0
        for i, (_, path) in enumerate(segments):
            first = next(read_records(path, lambda _why: None), None)
            if first is not None and first[0] == SNAPSHOT:
                base = i
        for _, path in segments[:base]:
            path.unlink()
        self._replay = [path for _, path in segments[base:]]
        self._seq = segments[-1][0] + 1 if segments else 1
        self._fd: int | None = None
        self._open_on_append = False  # the first record opens a segment (`recohop check` leaves no file)
        self._paths: list[Path] = []
        self.size = sum(p.stat().st_size for p in self._replay)
        self._recent: deque[tuple[int, bytes]] = deque()  # (decisions in it, decisions payload)
        self._recent_count = 0
        self._dirty = False
        self._last_sync = self.clock()
        self._last_compact = self.clock()
        self._last_attempt = -1e18
        self._snapshot: Snapshot = lambda: ()
        self._live: Callable[[], int] = lambda: 0
        self.metrics.bytes.set(self.size)

    # -- recovery -------------------------------------------------------------------------------------------

    def _corrupt(self, why: str) -> None:
        self.metrics.corrupt.inc()
        self.log.warning("write-ahead log in %s: %s; the rest of that segment is skipped", self.dir, why)

    def replay_decisions(self) -> Iterator[Decided]:
        """Every logged decision, oldest first (to be put in the decision cache before any data)."""
        for path in self._replay:
            for kind, payload in read_records(path, lambda _why: None):  # counted once, in replay_data
                if kind == DECISIONS:
                    self._remember(payload)
                    yield from decode_decisions(payload)

    def replay_data(self) -> Iterator[tuple[int, bytes]]:
        """Every logged traces/logs request (serialized), oldest first."""
        for path in self._replay:
            for kind, payload in read_records(path, self._corrupt):
                if kind in (TRACES, LOGS):
                    yield kind, payload

    def start(self, snapshot: Snapshot, live_bytes: Callable[[], int]) -> None:
        """Begin appending (after replay): a new segment after the replayed ones, which stay until the next
        compaction (a second crash before it replays them again, with the decisions made since).
        `snapshot` yields the buffer's request entries, `live_bytes` estimates their size."""
        self._snapshot = snapshot
        self._live = live_bytes
        self._paths = list(self._replay)
        self._replay = []
        self._open_on_append = True

    def _open_segment(self) -> int:
        path = self.dir / f"seg-{self._seq:08d}.wal"
        self._seq += 1
        fd = create_segment(path, FRAMING)
        self._fd = fd
        self._paths.append(path)
        self.size += len(MAGIC)
        self._sync_dir()
        return fd

    # -- appending ------------------------------------------------------------------------------------------

    def append_traces(self, raw: bytes) -> None:
        self._append(TRACES, raw)

    def append_logs(self, raw: bytes) -> None:
        self._append(LOGS, raw)

    def append_decisions(self, decided: list[Decided]) -> None:
        if decided:
            payload = encode_decisions(decided)
            self._remember(payload, len(decided))
            self._append(DECISIONS, payload)

    def _remember(self, payload: bytes, count: int | None = None) -> None:
        """Keep the newest decisions (serialized) for compaction: late spans may still come for them."""
        count = _decisions_in(payload) if count is None else count
        self._recent.append((count, payload))
        self._recent_count += count
        while self._recent and self._recent_count - self._recent[0][0] >= self.settings.keep_decisions:
            self._recent_count -= self._recent.popleft()[0]

    def _append(self, kind: int, payload: bytes) -> None:
        fd = self._fd
        if fd is None:
            if not self._open_on_append:
                return
            self._open_on_append = False
            try:
                fd = self._open_segment()
            except OSError as exc:
                self.metrics.write_errors.inc()
                self.log.error("write-ahead log in %s: cannot open a segment (%s); logging is off", self.dir,
                               exc.strerror or type(exc).__name__)
                return
        n = _HEAD_SIZE + len(payload)
        if self.size + n > self.settings.max_bytes:
            now = self.clock()
            if now - self._last_attempt >= 1.0 and self._worth_compacting():  # not on every request
                self._last_attempt = now
                self._try_compact()
                fd = self._fd
            if fd is None or self.size + n > self.settings.max_bytes:
                self.metrics.over_budget.inc()
                return
        try:
            written = write_all(fd, (_record(kind, payload), payload))
            if self.settings.fsync == "always":
                os.fdatasync(fd)
                self.metrics.fsyncs.inc()
        except OSError as exc:  # disk full, I/O error: keep serving; this record would not survive a crash
            self.metrics.write_errors.inc()
            self.log.error("write-ahead log in %s: write failed (%s)", self.dir, exc.strerror or type(exc).__name__)
            return
        self.size += written
        self.metrics.written[kind].inc()
        self._dirty = True

    def tick(self, now: float) -> None:
        """On the stage's flush timer: fsync per policy, compact when the log is big or on the timer."""
        if self._fd is None:
            return
        if self._dirty and self.settings.fsync == "interval" and now - self._last_sync >= self.settings.fsync_interval:
            os.fdatasync(self._fd)
            self.metrics.fsyncs.inc()
            self._dirty = False
            self._last_sync = now
        due = self.size > self.settings.max_bytes // 2 or now - self._last_compact >= self.settings.compact_interval
        if due and now - self._last_attempt >= 1.0 and self._worth_compacting():
                self._last_attempt = now
                self._try_compact()
        self.metrics.bytes.set(self.size)

    # -- compaction -----------------------------------------------------------------------------------------

    def _worth_compacting(self) -> bool:
        """At least half of the log is dead (decided traces): else rewriting the live half would only cost."""
        return 2 * (self._live() + 18 * self._recent_count) < self.size

    def _try_compact(self) -> None:
        try:
            self.compact()
        except OSError as exc:  # the old segments are still in place: nothing is lost, appending goes on
            self.metrics.write_errors.inc()
            self.log.error("write-ahead log in %s: compaction failed (%s)", self.dir,
                           exc.strerror or type(exc).__name__)

    def compact(self) -> None:
        """Write what is live into a fresh segment, then delete the older ones."""
        self._last_compact = self.clock()
        tmp = self.dir / f"seg-{self._seq:08d}.tmp"
        path = tmp.with_suffix(".wal")
        self._seq += 1
        try:
            fd = create_segment(tmp, FRAMING, append=False)
        except OSError:
            tmp.unlink(missing_ok=True)  # created but its magic not written (disk full)
            raise
        size = len(MAGIC)
        try:
            parts: list[bytes] = [_record(SNAPSHOT, b"")]
            for _count, payload in self._recent:
                parts += (_record(DECISIONS, payload), payload)
            size += write_all(fd, parts)
            for kind, payload in self._snapshot_records():
                if size + _HEAD_SIZE + len(payload) > self.settings.max_bytes:
                    self.metrics.over_budget.inc()  # the disk bound wins: this part would not survive a crash
                    continue
                size += write_all(fd, [_record(kind, payload), payload])
            if self.settings.fsync != "never":
                os.fdatasync(fd)
                self.metrics.fsyncs.inc()
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.rename(tmp, path)
        self._sync_dir()
        if self._fd is not None:
            os.close(self._fd)
        for old in self._paths:
            old.unlink(missing_ok=True)
        os.close(fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._open_on_append = False
        self._paths = [path]
        self._dirty = False
        self.size = size
        self.metrics.compactions.inc()
        self.metrics.bytes.set(size)

    def _snapshot_records(self) -> Iterator[tuple[int, bytes]]:
        """The stage's buffer as requests of about SNAPSHOT_RECORD_BYTES (request entries concatenate)."""
        pending: dict[int, list[bytes]] = {TRACES: [], LOGS: []}
        sizes = {TRACES: 0, LOGS: 0}
        for kind, piece in self._snapshot():
            pending[kind].append(piece)
            sizes[kind] += len(piece)
            if sizes[kind] >= SNAPSHOT_RECORD_BYTES:
                yield kind, b"".join(pending[kind])
                pending[kind], sizes[kind] = [], 0
        for kind, pieces in pending.items():
            if pieces:
                yield kind, b"".join(pieces)

    def _sync_dir(self) -> None:
        if self.settings.fsync != "never":
            sync_dir(self.dir)

    # -- stop -----------------------------------------------------------------------------------------------

    def close(self, clean: bool) -> None:
        """`clean`: everything was decided and handed on (graceful stop), so nothing must be replayed."""
        self._open_on_append = False
        if self._fd is not None:
            if not clean and self.settings.fsync != "never":
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None
        if clean:
            for path in [*self._paths, *self._replay]:
                path.unlink(missing_ok=True)
            self._paths, self._replay = [], []
            self.size = 0
            self._sync_dir()
            self.metrics.bytes.set(0)
        os.close(self._lock_fd)
