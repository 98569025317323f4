"""Local sink for kept data when no next hop is configured: OTLP/JSON lines (hex ids, integer enums; see
`processor/otlpjson.py`), one export request per line, rotated by size. A request whose line would pass 1 MiB
(`otlpjson.MAX_LINE_BYTES`, what otelcol's otlpjsonfile receiver reads by default) is written as several smaller
requests, one per line. Files are created 0600 (they hold telemetry; redaction has already run)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from google.protobuf.message import Message

from processor import otlpjson
from processor.signals import REQUEST_TYPES


class FileSink:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # several export consumers write; rotation must not race a write
        self._file = self._open()

    def _open(self):  # noqa: ANN202 - a text file object
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, signal: str, payload: bytes) -> None:
        self.write_message(REQUEST_TYPES[signal].FromString(payload))

    def write_message(self, request: Message) -> None:
        lines = "".join(line + "\n" for line in otlpjson.dump_lines(request))
        with self._lock:
            self._append(lines)

    def _append(self, text: str) -> None:
        if self.max_bytes and self._file.tell() + len(text) > self.max_bytes and self._file.tell() > 0:
            self._rotate()
        self._file.write(text)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self._open()

    def close(self) -> None:
        with self._lock:
            self._file.close()
