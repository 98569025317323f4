"""The hop's own logs: `telemetry.log_format: text` (a line a person reads) or `json` (one object per line, for
log collectors: time, level, logger, message, and the record's structured fields).

Fields are what a call passes as `extra={...}`: endpoints, counts, stage names. Like the messages, they never
carry telemetry attribute values (the hop's rule, SECURITY.md); this module adds nothing from the data path.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside strings are escaped by json.dumps)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}
        if fields:
            entry["fields"] = fields
        if record.exc_info:
            entry["error"] = {"type": record.exc_info[0].__name__ if record.exc_info[0] else None,
                              "stack": self.formatException(record.exc_info)}
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger (recohop's and the libraries') through one handler on stderr in `log_format`;
    replaces handlers set before, so calling it twice does not print twice."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}, expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
