"""Structured logs: one JSON object per line, each carrying the id of the request it is about.

The request id lives in a context variable set by `RequestContextMiddleware`, so any log line
written while a request is handled (an access line, a 503 warning, a 500's traceback) names it
without being passed around. `configure_logging` is for the process that serves (the CLI's
`serve`); the app itself never touches global logging, so embedding it stays polite.
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


class RequestIdFilter(logging.Filter):
    """Stamp every record with the current request's id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "message": ..., "request_id": ...}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "info") -> None:
    """Send every log record (ours and uvicorn's) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
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
    # Alembic announces its context at INFO each time /readyz reads the revision.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
