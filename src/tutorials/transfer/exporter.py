"""Bulk export: the catalog (or the part matching tags / a query) as CSV, NDJSON or JSON.

One `COPY ... TO STDOUT` in one transaction (a consistent snapshot), streamed chunk by chunk to
the caller: a file, or an async iterator of bytes for an HTTP response. Nothing is held in
memory beyond a few chunks, and there is no per-row work in Python (see `sql.copy_out`).

What it writes reads back through import unchanged: the CSV header is `name,url,description,
tags` with tags joined by `;`; NDJSON / JSON objects carry the API's fields. Rows come oldest
first (by id), so exporting, importing into an empty catalog and exporting again gives the same
file.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tutorials.db.session import Database
from tutorials.errors import InvalidInput
from tutorials.schemas import check_query, check_tags
from tutorials.transfer import sql
from tutorials.transfer.importer import as_database
from tutorials.transfer.sql import ExportFormat

#: The statement timeout of an export, in seconds: a whole catalog is one COPY statement.
EXPORT_TIMEOUT = 3600.0
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "ndjson", "json")
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "json": "application/json",
}

Sink = Callable[[bytes], Coroutine[Any, Any, None]]


def _regular_file(file: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(file.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def check_format(format: str) -> ExportFormat:
    for known in EXPORT_FORMATS:
        if format == known:
            return known
    raise InvalidInput(f"unknown export format {format!r}: use one of {', '.join(EXPORT_FORMATS)}")


class _JsonArray:
    """Turns NDJSON lines into one JSON array: `[`, lines joined by `,`, `]`."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.started = False
        self.tail = b""

    async def __call__(self, data: bytes) -> None:
        data = data.replace(b"\n", b",\n")
        if not self.started:
            self.started = True
            data = b"[\n" + data
        data = self.tail + data
        self.tail = data[-2:]  # the last ",\n" may be the last row's: hold it back
        await self.sink(data[:-2])

    async def close(self) -> None:
        if not self.started:
            await self.sink(b"[]\n")
        else:
            await self.sink(self.tail.removesuffix(b",\n") + b"\n]\n")


async def export_to(
    target: Database | AsyncEngine,
    sink: Sink,
    *,
    format: str = "csv",
    tags: Sequence[str] = (),
    query: str | None = None,
    statement_timeout: float = EXPORT_TIMEOUT,
) -> int:
    """Stream the export to an async `sink(bytes)`; returns the number of rows."""
    kind = check_format(format)
    tag_filter = check_tags(tags)
    text_query = check_query(query) if query is not None else None
    database = as_database(target)
    array = _JsonArray(sink) if kind == "json" else None
    async with database.session() as session:
        connection = await sql.begin(session, max(1, int(statement_timeout * 1000)))
        rows = await sql.copy_out(
            connection, array or sink, format=kind, tags=tag_filter, query=text_query
        )
    if array is not None:
        await array.close()
    return rows


async def export_rows(
    target: Database | AsyncEngine,
    out: IO[bytes] | Sink,
    *,
    format: str = "csv",
    tags: Sequence[str] = (),
    query: str | None = None,
    statement_timeout: float = EXPORT_TIMEOUT,
) -> int:
    """Write the export to a binary file (or an async callable); returns the number of rows.

    `tags`: only tutorials carrying all of them; `query`: full-text search, same syntax as
    `search_tutorials`. A regular file is written directly; anything else (a pipe, a socket)
    from a worker thread, so a slow reader never blocks the event loop.
    """
    if callable(out):
        sink: Sink = out
    elif _regular_file(out):
        write = out.write

        async def sink(data: bytes) -> None:
            write(data)  # a local file: a write costs less than a thread hop

    else:
        slow_write = out.write

        async def sink(data: bytes) -> None:
            await asyncio.to_thread(slow_write, data)

    return await export_to(
        target, sink, format=format, tags=tags, query=query, statement_timeout=statement_timeout
    )


def iter_export(
    target: Database | AsyncEngine,
    *,
    format: str = "csv",
    tags: Sequence[str] = (),
    query: str | None = None,
    statement_timeout: float = EXPORT_TIMEOUT,
) -> AsyncGenerator[bytes, None]:
    """The export as an async iterator of byte chunks (for a streamed HTTP response).

    Arguments are checked before the first chunk, so a bad format or filter fails before any
    output. The COPY runs in a task feeding a small queue: a slow reader slows the database
    down instead of filling memory. Closing the iterator early cancels the export.
    """
    check_format(format)
    check_tags(tags)
    if query is not None:
        check_query(query)
    return _iterate(target, format, tags, query, statement_timeout)


async def _iterate(
    target: Database | AsyncEngine,
    format: str,
    tags: Sequence[str],
    query: str | None,
    statement_timeout: float,
) -> AsyncGenerator[bytes, None]:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)

    async def put(data: bytes) -> None:
        await queue.put(bytes(data))  # asyncpg hands over bytearrays

    async def produce() -> int:
        try:
            return await export_to(
                target,
                put,
                format=format,
                tags=tags,
                query=query,
                statement_timeout=statement_timeout,
            )
        finally:
            await queue.put(None)

    task = asyncio.create_task(produce())
    try:
        while True:
            chunk = await queue.get()
            if chunk is None:
                break
            yield chunk
        await task  # raises what the export raised
    finally:
        if not task.done():
            task.cancel()
            # drain so a producer blocked on a full queue can see its cancellation
            while not queue.empty():
                queue.get_nowait()
            await asyncio.gather(task, return_exceptions=True)
