"""The server's log: its level and its format, text for a terminal or JSON lines for a log pipeline.

`configure_logging(LogOptions(level, format))` sets the root logger once, at `adrank serve`'s start: records
below `level` are dropped (every logger's, the libraries' too), the others go to stderr as
- text: `<time> <LEVEL> <logger>: <message>`, one line per record (a traceback follows on its own lines);
- json: one JSON object per line with `time` (UTC, ISO 8601, milliseconds), `level` (lower case, as the
  --log-level values), `logger`, `message`, then the context fields a log call passes in `extra=` —
  `model`, `version`, `tenant`, `request_id` — where it passes them (`log_fields` builds them), and an
  exception's traceback as `exception`. A record never spans two lines, whatever its message holds.

Log calls that concern a model or a version pass `extra=log_fields(model=..., version=...)`, and one that
concerns a call (server/call_errors.py: a call answered INTERNAL) its tenant and request id too, so that a
pipeline filters by field instead of parsing messages. Only the standard library: no new dependency.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TextIO

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
# The `extra=` fields a JSON line carries when a log call gives them, in this order.
CONTEXT_FIELDS = ("model", "version", "tenant", "request_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class LogOptions:
    # info: a version's load, switch and unload, the start and the drain; debug adds the libraries' detail.
    level: LogLevel = "info"
    format: LogFormat = "text"


def log_fields(
    *, model: str | None = None, version: int | None = None, tenant: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The context fields of one log call, for its `extra=`: those given, by their names in the JSON line."""
    given = {"model": model, "version": version, "tenant": tenant, "request_id": request_id}
    return {name: value for name, value in given.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line (the module's docstring lists its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a field a caller passes that JSON has no type for (a Path) is still one line.
        return json.dumps(line, ensure_ascii=False, default=str)


class _ServerLogHandler(logging.StreamHandler):
    """The handler `configure_logging` installs: a later call replaces it and leaves others' alone (a test
    runner's capture, say)."""


def configure_logging(options: LogOptions, stream: TextIO | None = None) -> None:
    """Sends every logger's records at `options.level` and above to `stream` (stderr) in `options.format`,
    replacing the handler an earlier call installed."""
    handler = _ServerLogHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if options.format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServerLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(options.level.upper())
