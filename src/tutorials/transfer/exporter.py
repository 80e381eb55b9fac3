"""Bulk export: the catalog (or the part matching tags / a query) as CSV, NDJSON or JSON.

`COPY ... TO STDOUT` in a REPEATABLE READ, READ ONLY transaction (one snapshot), streamed chunk
by chunk to the caller: a file, or an async iterator of bytes for an HTTP response. Nothing is
held in memory beyond a few chunks, and there is no per-row work in Python (see `sql.copy_out`).

A big unfiltered export to a regular file can run as `jobs` COPYs at once, each over a range of
ids, on its own connection, all sharing the first transaction's snapshot: the server's work (the
bottleneck: it formats every row) is spread over its cores, as `pg_dump --jobs` does. The first
range streams into the file; the others are spilled to temporary files beside it and appended
in order (in the kernel, `os.sendfile`), so the file is byte for byte what one COPY writes.

What it writes reads back through import unchanged: the CSV header is `name,url,description,
tags` with tags joined by `;`, cells that a spreadsheet would run as formulas prefixed with `'`
(which import takes off; `raw_csv` turns both off); NDJSON / JSON objects carry the API's
fields. Rows come oldest
first (by id), so exporting, importing into an empty catalog and exporting again gives the same
file.

A **backup** (`format="backup"`) is NDJSON with every column a restore needs to give the table
back as it was: ids, timestamps (UTC, microseconds) and versions, after a first line that says
what the file is (`{"tutorials_backup":1}`). `tutorials.service.restore` reads it back into an
empty catalog; an import would read it as new rows and drop what makes it a backup.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import stat
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from contextlib import ExitStack
from typing import IO, Any

from tutorials.db.database import Connection, Database
from tutorials.errors import InvalidInput
from tutorials.schemas import check_query, check_tags
from tutorials.service import refused_query
from tutorials.transfer import sql
from tutorials.transfer.importer import as_database
from tutorials.transfer.sql import ExportFormat, IdRange

#: The statement timeout of an export, in seconds: a whole catalog is one COPY statement.
EXPORT_TIMEOUT = 3600.0
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "ndjson", "json", "backup")
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "json": "application/json",
    "backup": "application/x-ndjson",
}
#: A COPY stream of a parallel export covers at least this many ids: below that, a second
#: connection, a shared snapshot and a spill file cost more than they save.
PARALLEL_MIN_ROWS = 100_000
#: Bytes per read when a spilled part is fed to a sink (not to a regular file).
_APPEND_CHUNK = 1 << 20

Sink = Callable[[bytes], Coroutine[Any, Any, None]]
#: Adds a spilled part (a temporary file, complete) to the output, after what came before.
Append = Callable[[IO[bytes]], Awaitable[None]]


class ExportWriteError(Exception):
    """The export's output could not be written (a full disk, a file closed under it).

    Not a `TutorialsError`, and not an `OSError` either: the unit of work and the command line
    classify a bare `OSError` as "cannot reach the database", which would send whoever reads
    the message to look at the wrong thing. `reason` is the system's words (`No space left on
    device`); the original error is the `__cause__`.
    """

    def __init__(self, error: OSError) -> None:
        self.reason = error.strerror or str(error) or type(error).__name__
        super().__init__(f"cannot write the export: {self.reason}")


def _writing(write: Callable[[bytes], object]) -> Sink:
    """An async sink over a local file's `write`: a write costs less than a thread hop."""

    async def sink(data: bytes) -> None:
        try:
            write(data)
        except OSError as exc:
            raise ExportWriteError(exc) from exc

    return sink


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


def check_jobs(jobs: int) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InvalidInput(f"jobs must be a whole number >= 1, not {jobs!r}")
    return jobs


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


def _feeding(sink: Sink) -> Append:
    """Append a spilled part by reading it back into `sink`."""

    async def append(spill: IO[bytes]) -> None:
        try:
            spill.seek(0)
            chunk = spill.read(_APPEND_CHUNK)
        except OSError as exc:
            raise ExportWriteError(exc) from exc
        while chunk:
            await sink(chunk)
            try:
                chunk = spill.read(_APPEND_CHUNK)
            except OSError as exc:
                raise ExportWriteError(exc) from exc

    return append


def _spill_file(directory: str | None) -> IO[bytes]:
    """A temporary file for a spilled part: beside the output if it can, else in $TMPDIR."""
    if directory is not None:
        try:
            return tempfile.TemporaryFile(dir=directory, prefix=".tutorials-export-")
        except OSError:
            pass
    try:
        return tempfile.TemporaryFile(prefix="tutorials-export-")
    except OSError as exc:
        raise ExportWriteError(exc) from exc


class _Stopped(Exception):
    """How a stream ends when another stream of the same export failed."""


class _Streams:
    """The COPY streams of one export, stopped together when one of them fails."""

    def __init__(self) -> None:
        self.sinks: list[sql.CopySink] = []

    def sink(self, sink: Sink) -> sql.CopySink:
        guarded = sql.CopySink(sink)
        self.sinks.append(guarded)
        return guarded

    def failure(self) -> Exception | None:
        """The first failure of a sink of this export's (not the stops it caused)."""
        for sink in self.sinks:
            if sink.failure is not None and not isinstance(sink.failure, _Stopped):
                return sink.failure
        return None

    async def all(self, works: Sequence[Awaitable[int]]) -> list[int]:
        """Run `works` at once; the rows each sent, or the first failure (the others stopped).

        The others are stopped through their sinks (`CopySink.stop` closes their connections),
        not by cancelling their tasks: a task cancelled just after asyncpg handed it a chunk
        (its waiter done, the task not yet resumed) leaves the COPY running unseen and the
        connection out of step with the server. Cancelling us still cancels them.
        """
        tasks = [asyncio.ensure_future(work) for work in works]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if not all(task.done() for task in tasks):
                for sink in self.sinks:
                    sink.stop(_Stopped("another stream of this export failed"))
                await asyncio.wait(tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        failures = [task.exception() for task in tasks]
        for failure in failures:
            if failure is not None and not isinstance(failure, _Stopped):
                raise failure
        return [task.result() for task in tasks]


async def _export(
    database: Database,
    sink: Sink,
    *,
    kind: ExportFormat,
    tags: list[str],
    query: str | None,
    statement_timeout: float,
    jobs: int,
    append: Append,
    spill_dir: str | None,
    raw_csv: bool = False,
) -> int:
    """One export; `jobs` > 1 may split it into that many COPY streams (see the module), at
    most as many as the database's streaming budget (`Database.stream_connections`)."""
    timeout_ms = max(1, int(statement_timeout * 1000))
    streams = _Streams()
    jobs = min(jobs, database.stream_connections)

    async def copy(
        connection: Connection,
        to: Sink | sql.CopySink,
        ids: IdRange = sql.WHOLE,
        header: bool = True,
    ) -> int:
        return await sql.copy_out(
            connection,
            to,
            format=kind,
            tags=tags,
            query=query,
            time_limit=statement_timeout,
            ids=ids,
            header=header,
            raw_csv=raw_csv,
        )

    async def whole(connection: Connection) -> int:
        await sql.prepare_export(connection, timeout_ms)
        if kind == "backup":  # once the database answered: a failure to reach it sends nothing
            await sink(sql.BACKUP_HEADER)
        # a filtered export reads its rows through an index over the whole table, which each
        # stream would read again: it stays one stream
        parallel = jobs > 1 and not tags and query is None
        ranges = await sql.split_ids(connection, jobs, PARALLEL_MIN_ROWS) if parallel else []
        if len(ranges) <= 1:
            return await copy(connection, streams.sink(sink))
        snapshot = await sql.export_snapshot(connection)

        async def spilled(ids: IdRange, to_spill: sql.CopySink) -> int:
            async def part(other: Connection) -> int:
                await sql.prepare_export(other, timeout_ms, snapshot=snapshot)
                return await copy(other, to_spill, ids, header=False)

            return await database.stream(part, statement_timeout=statement_timeout)

        with ExitStack() as stack:
            spills = [stack.enter_context(_spill_file(spill_dir)) for _ in ranges[1:]]
            # every sink made before any stream starts, so that a failure stops them all
            first = streams.sink(sink)
            rest = [streams.sink(_writing(spill.write)) for spill in spills]
            counts = await streams.all(
                [
                    copy(connection, first, ranges[0]),
                    *(spilled(ids, to) for ids, to in zip(ranges[1:], rest, strict=True)),
                ]
            )
            for spill in spills:
                await append(spill)
        return sum(counts)

    try:
        return await database.stream(whole, statement_timeout=statement_timeout)
    except Exception as exc:
        # A COPY stopped by its sink (a full disk, a client gone) closed its connection, so
        # what surfaces here is a lost connection; the sink's own failure is the real story.
        failure = streams.failure()
        if failure is not None:
            raise failure  # noqa: B904 - it keeps its own cause (the OSError, ...)
        refused = refused_query(exc) if query is not None else None
        if refused is not None:
            raise refused from None
        raise


async def export_to(
    target: Database,
    sink: Sink,
    *,
    format: str = "csv",
    tags: Sequence[str] = (),
    query: str | None = None,
    statement_timeout: float = EXPORT_TIMEOUT,
    raw_csv: bool = False,
) -> int:
    """Stream the export to an async `sink(bytes)`, as one COPY; returns the number of rows.
    `raw_csv`: see `export_rows`."""
    return await _export_checked(
        target, sink, format, tags, query, statement_timeout, 1, None, None, raw_csv=raw_csv
    )


async def _export_checked(
    target: Database,
    sink: Sink,
    format: str,
    tags: Sequence[str],
    query: str | None,
    statement_timeout: float,
    jobs: int,
    append: Append | None,
    spill_dir: str | None,
    *,
    raw_csv: bool = False,
) -> int:
    kind = check_format(format)
    tag_filter = check_tags(tags)
    text_query = check_query(query) if query is not None else None
    database = as_database(target)
    array = _JsonArray(sink) if kind == "json" else None
    out = array or sink
    rows = await _export(
        database,
        out,
        kind=kind,
        tags=tag_filter,
        query=text_query,
        statement_timeout=statement_timeout,
        jobs=jobs,
        # a JSON array's parts go through the array's sink; a file's are appended in the kernel
        append=append if append is not None and array is None else _feeding(out),
        spill_dir=spill_dir,
        raw_csv=raw_csv,
    )
    if array is not None:
        await array.close()
    return rows


def _sending(out: IO[bytes]) -> Append:
    """Append a spilled part to the regular file `out` in the kernel (`os.sendfile`)."""

    async def append(spill: IO[bytes]) -> None:
        try:
            spill.flush()
            out.flush()
            size = spill.seek(0, os.SEEK_END)
            offset = _send(out.fileno(), spill.fileno(), size)
            if offset < size:  # no sendfile between files here: copy it through user space
                spill.seek(offset)
                while chunk := spill.read(_APPEND_CHUNK):
                    out.write(chunk)
            out.seek(0, os.SEEK_END)  # the file object's idea of its position, after sendfile
        except OSError as exc:
            raise ExportWriteError(exc) from exc

    return append


def _send(out: int, spill: int, size: int) -> int:
    """Copy `spill` (from its start) to `out`'s position in the kernel; the bytes copied, fewer
    than `size` only when this system cannot sendfile between files (nothing copied then)."""
    offset = 0
    while offset < size:
        try:
            sent = os.sendfile(out, spill, offset, size - offset)
        except OSError as exc:
            if offset == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK):
                return 0
            raise
        if sent == 0:
            raise OSError(errno.EIO, "the spilled part ended early")
        offset += sent
    return offset


def _directory_of(file: IO[bytes]) -> str | None:
    name = getattr(file, "name", None)
    return os.path.dirname(os.path.abspath(name)) if isinstance(name, str) else None


async def export_rows(
    target: Database,
    out: IO[bytes] | Sink,
    *,
    format: str = "csv",
    tags: Sequence[str] = (),
    query: str | None = None,
    statement_timeout: float = EXPORT_TIMEOUT,
    jobs: int = 1,
    raw_csv: bool = False,
) -> int:
    """Write the export to a binary file (or an async callable); returns the number of rows.

    `tags`: only tutorials carrying all of them; `query`: full-text search, same syntax as
    `search_tutorials`. A regular file is written directly; anything else (a pipe, a socket)
    from a worker thread, so a slow reader never blocks the event loop.

    `jobs`: up to that many COPY streams (and pool connections) at once for a big, unfiltered
    export to a regular file, the later ranges spilled to temporary files beside it (see the
    module); the output is the same. Anything else is one stream.

    CSV is safe to open in a spreadsheet: a cell (name, description, tags) that begins with
    `=`, `+`, `-`, `@`, a tab or a carriage return, or with `'`s followed by one of those, gets
    one more `'` in front (OWASP's advice against "CSV injection"), which CSV import takes off
    again (`readers.read_csv`), so the export imports back to the same rows. `raw_csv` writes
    the cells as stored (import those with `raw_csv` too).

    A failure to write (to `out` or a spill file) raises `ExportWriteError`.
    """
    check_jobs(jobs)
    append: Append | None = None
    spill_dir: str | None = None
    if callable(out):
        sink: Sink = out
        jobs = 1
    elif _regular_file(out):
        sink = _writing(out.write)
        append = _sending(out)
        spill_dir = _directory_of(out)
    else:
        slow_write = out.write
        jobs = 1

        async def sink(data: bytes) -> None:
            try:
                await asyncio.to_thread(slow_write, data)
            except OSError as exc:
                raise ExportWriteError(exc) from exc

    return await _export_checked(
        target, sink, format, tags, query, statement_timeout, jobs, append, spill_dir,
        raw_csv=raw_csv,
    )  # fmt: skip


class ExportStalled(Exception):
    """The reader of `iter_export` took nothing for `seconds`: the export was stopped (its COPY
    ended and its connection closed, see `sql.CopySink`) rather than hold a connection for a
    client that may never read again."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the export's reader took nothing for {seconds:g} s")


class _Closed(Exception):
    """How the COPY of an `iter_export` ends when its reader closed the iterator early."""


#: After the reader closes an `iter_export` early, how long the COPY gets to stop through its
#: sink (at its next chunk) before its task is cancelled.
_STOP_GRACE = 1.0


def iter_export(
    target: Database,
    *,
    format: str = "csv",
    tags: Sequence[str] = (),
    query: str | None = None,
    statement_timeout: float = EXPORT_TIMEOUT,
    stall_timeout: float | None = None,
    raw_csv: bool = False,
) -> AsyncGenerator[bytes, None]:
    """The export as an async iterator of byte chunks (for a streamed HTTP response).

    Arguments are checked before the first chunk, so a bad format or filter fails before any
    output. The COPY runs in a task feeding a small queue: a slow reader slows the database
    down instead of filling memory. With `stall_timeout`, a reader that takes nothing for that
    many seconds while the queue is full stops the export: its COPY ends, its connection is
    freed, and the iterator raises `ExportStalled`. Closing the iterator early stops the
    export the same way. `raw_csv`: see `export_rows`.
    """
    check_format(format)
    check_tags(tags)
    if query is not None:
        check_query(query)
    return _iterate(target, format, tags, query, statement_timeout, stall_timeout, raw_csv)


async def _iterate(
    target: Database,
    format: str,
    tags: Sequence[str],
    query: str | None,
    statement_timeout: float,
    stall_timeout: float | None,
    raw_csv: bool,
) -> AsyncGenerator[bytes, None]:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
    closed = False

    async def put(data: bytes) -> None:
        # Raising here stops the COPY through its sink (`CopySink.stop` closes the connection):
        # cancelling the task could leave the COPY running unseen (see `_Streams.all`).
        if closed:
            raise _Closed
        try:
            async with asyncio.timeout(stall_timeout):
                await queue.put(bytes(data))  # asyncpg hands over bytearrays
        except TimeoutError:
            raise ExportStalled(stall_timeout or 0.0) from None

    async def produce() -> int:
        try:
            rows = await export_to(
                target,
                put,
                format=format,
                tags=tags,
                query=query,
                statement_timeout=statement_timeout,
                raw_csv=raw_csv,
            )
        except BaseException:
            # the reader may be gone: make room for the end mark, whatever is in the queue
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
            raise
        await queue.put(None)
        return rows

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
            closed = True
            # room for a producer blocked on a full queue, so it reaches its next chunk
            while not queue.empty():
                queue.get_nowait()
            done, _ = await asyncio.wait({task}, timeout=_STOP_GRACE)
            if not done:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
