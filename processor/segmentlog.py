"""CRC-framed segment logs on disk: the record framing, segment files, torn-tail detection and fsync steps that
the tail-sampling write-ahead log (`processor/sampling/wal.py`) and the exporter's spill queue
(`processor/spillqueue.py`) share. Each log keeps its own policy (what a segment holds, when it is deleted,
whether a bad record ends a segment or is skipped); how bytes get to disk and back is written once, here.

A record is `<u32 payload length><u32 crc32(kind + meta + payload)><u8 kind><meta><payload>`: `meta` is a fixed
number of bytes per log (none for the write-ahead log, the u32 item count for the spill queue), covered by the
CRC but not by the length. A segment may start with a magic line naming its log and format version. A record
whose header or payload runs past the end of the file is a torn tail (the process died mid-write); one failing
its CRC or of an unknown kind is corrupt. Either ends the reading of that segment.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_BASE = struct.Struct("<IIB")  # payload length, crc32(kind + meta + payload), kind
_IOV_MAX = 512  # parts per writev call (Linux allows 1024)

TORN_HEADER = "torn record header at the end of a segment"
TORN = "torn record at the end of a segment"
CORRUPT = "record failing its checksum"
NO_MAGIC = "segment without the expected header"


@dataclass(frozen=True)
class Frame:
    """One record read back: where it starts and ends in its segment, its kind, meta and payload."""

    offset: int
    end: int
    kind: int
    meta: bytes
    payload: bytes


class Framing:
    """One log's record format: its record kinds, meta size and segment magic."""

    def __init__(self, kinds: Iterable[int], meta_size: int = 0, magic: bytes = b"",
                 max_record: int = 1 << 30) -> None:
        self.kinds = frozenset(kinds)
        self.meta_size = meta_size
        self.magic = magic
        self.max_record = max_record  # a length above this is a torn or corrupt header, not a record
        self.head_size = _BASE.size + meta_size

    def crc(self, kind: int, meta: bytes, payload: bytes | memoryview) -> int:
        return zlib.crc32(payload, zlib.crc32(bytes((kind,)) + meta))

    def header(self, kind: int, payload: bytes, meta: bytes = b"") -> bytes:
        """The bytes written before `payload` (write both with `write_all`, no copy of the payload)."""
        assert len(meta) == self.meta_size
        return _BASE.pack(len(payload), self.crc(kind, meta, payload), kind) + meta

    def unpack(self, head: bytes | memoryview | mmap.mmap, at: int = 0) -> tuple[int, int, int, bytes]:
        """(payload length, crc, kind, meta) of the header at `at`."""
        length, crc, kind = _BASE.unpack_from(head, at)
        meta = bytes(head[at + _BASE.size:at + self.head_size])
        return length, crc, kind, meta

    def intact(self, crc: int, kind: int, meta: bytes, payload: bytes | memoryview) -> bool:
        return kind in self.kinds and self.crc(kind, meta, payload) == crc

    def frames(self, data: bytes | mmap.mmap, at: int, on_bad: Callable[[str], None],
               verify: bool = True) -> Iterator[Frame]:
        """The whole records of `data` from `at`, in order. The first torn or (with `verify`) corrupt record
        ends the walk and is reported to `on_bad` (TORN_HEADER, TORN or CORRUPT). Without `verify` only the
        framing is checked (lengths and kinds), as a recovery walk that checks CRCs later does."""
        end = len(data)
        head = self.head_size
        while at < end:
            if at + head > end:
                on_bad(TORN_HEADER)
                return
            length, crc, kind, meta = self.unpack(data, at)
            start = at + head
            if length > self.max_record or start + length > end:
                on_bad(TORN)
                return
            payload = data[start:start + length]
            if kind not in self.kinds or (verify and self.crc(kind, meta, payload) != crc):
                on_bad(CORRUPT)
                return
            yield Frame(at, start + length, kind, meta, payload)
            at = start + length

    def read_segment(self, path: Path, on_bad: Callable[[str], None], verify: bool = True,
                     at: int | None = None) -> Iterator[Frame]:
        """`frames` of one segment file, mapped rather than read (replaying a big log makes no copy of it);
        starts after the magic unless `at` is given. A segment not starting with the magic is refused whole
        (NO_MAGIC), never read as records."""
        data = map_file(path)
        if data is None:
            return
        if self.magic and data[:len(self.magic)] != self.magic:
            on_bad(NO_MAGIC)
            return
        yield from self.frames(data, len(self.magic) if at is None else at, on_bad, verify)


def map_file(path: Path) -> mmap.mmap | None:
    """The file mapped read-only, None when it is empty (mmap refuses empty files)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def segment_ids(directory: Path, prefix: str, suffix: str) -> list[tuple[int, Path]]:
    """The segments `<prefix><decimal id><suffix>` in `directory`, by id; other names are ignored."""
    out = []
    for path in directory.glob(f"{prefix}*{suffix}"):
        digits = path.name[len(prefix):len(path.name) - len(suffix)]
        if digits.isdigit():
            out.append((int(digits), path))
    return sorted(out)


def private_dir(directory: Path) -> None:
    """The log's directory, created 0700 (and made 0700 if it existed): records may hold span data."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def create_segment(path: Path, framing: Framing, exclusive: bool = True, append: bool = True) -> int:
    """A new segment file (0600) with the log's magic written; returns its fd. `exclusive`: fail if it exists
    (else truncate it)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | (os.O_APPEND if append else 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if framing.magic:
            write_all(fd, [framing.magic])
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, parts: Sequence[bytes]) -> int:
    """Write every part (gathered: no joined copy), going on after a short write; returns the bytes written.
    A write that makes no progress (disk full) raises OSError, so the caller can abandon or count the record."""
    total = 0
    for i in range(0, len(parts), _IOV_MAX):
        batch = parts[i:i + _IOV_MAX]
        size = sum(len(p) for p in batch)
        written = os.writev(fd, batch)
        if written != size:
            rest = memoryview(b"".join(batch))[written:]
            while rest:
                n = os.write(fd, rest)
                if n <= 0:
                    raise OSError(f"short write to a segment log ({size - len(rest)} of {size} bytes)")
                rest = rest[n:]
        total += size
    return total


def sync_dir(directory: Path) -> None:
    """fsync the directory, so a created, renamed or deleted segment survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
