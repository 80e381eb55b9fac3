"""Logs: one JSON object per line for machines, or one plain line for people; each carrying
the id of the request it is about.

The request id lives in a context variable set by `RequestContextMiddleware`, so any log line
written while a request is handled (an access line, a 503 warning, a 500's traceback) names it
without being passed around. `configure_logging` is for the process that serves (the CLI's
`serve`, which picks text on a terminal and JSON otherwise); the app itself never touches
global logging, so embedding it stays polite.

Libraries' chatter a person does not need is kept below INFO: Alembic announcing its context
and its plugins (`setup plugin alembic.autogenerate...`, seven lines whenever it loads), and,
in text, uvicorn's start-up lines (`serve` says itself, once, where it listens).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("tutorials_request_id", default=None)

#: `extra=` keys an access line may carry, in the order they are written.
ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "client")
#: `extra=` keys of `serve`'s start-up line.
STARTUP_FIELDS = ("url", "database", "data_dir")
LOG_FORMATS = ("json", "text")


class RequestIdFilter(logging.Filter):
    """Stamp every record with the current request's id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "message": ..., "request_id": ...}` per line;
    with `pid`, also the process's id (several worker processes share one log)."""

    def __init__(self, pid: bool = False) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.pid:
            entry["pid"] = record.process
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for key in (*ACCESS_FIELDS, *STARTUP_FIELDS):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`14:03:12 INFO listening on ...` per line: the time, the level and the message, then the
    request id and the access line's duration when there are; a traceback below when one.
    With `pid`, the process's id after the time (several worker processes share one log)."""

    def __init__(self, pid: bool = False) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        if self.pid:
            clock += f" [{record.process}]"
        line = f"{clock} {record.levelname:<7} {record.getMessage()}"
        duration = getattr(record, "duration_ms", None)
        if duration is not None:
            line += f" {duration:.1f} ms"
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line += f" [{request_id}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", format: str = "json", *, pid: bool = False) -> None:
    """Send every log record (ours and uvicorn's) to stderr, as JSON lines or plain text, each
    naming its process when `pid` (`serve --workers`)."""
    if format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {format!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(pid) if format == "json" else TextFormatter(pid))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    # Alembic announces its context at INFO each time it runs, and its plugins when it loads.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if format == "text":
        # `serve`'s own line says where it listens; uvicorn's would say it again. A filter,
        # not a level: uvicorn sets its loggers' levels itself when its Config is made.
        handler.addFilter(_below_warning_from("uvicorn.error"))


def _below_warning_from(name: str) -> logging.Filter:
    """Drops the records of logger `name` below WARNING."""

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.name != name or record.levelno >= logging.WARNING

    return Quiet()
