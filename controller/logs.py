"""JSON logs: one object per line with time, level, logger, message and any `extra` fields.

Every line is bounded: the message, each string field and the traceback are clipped, so
an event that echoes megabytes of input into a reason cannot flood the log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# attributes every LogRecord has; anything else came from `extra=` and is logged as a field
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
MAX_MESSAGE_CHARS = 2048
MAX_FIELD_CHARS = 512
MAX_EXCEPTION_CHARS = 8192


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    marker = f"… [{len(text)} characters, clipped]"
    return text[: max(0, limit - len(marker))] + marker


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clip(record.getMessage(), MAX_MESSAGE_CHARS),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else clip(str(value), MAX_FIELD_CHARS)
        if record.exc_info:
            entry["exception"] = clip(self.formatException(record.exc_info), MAX_EXCEPTION_CHARS)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Route the root logger to one JSON line per record on stderr (or `stream`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
