"""Bulk import and export over HTTP: `POST /tutorials/import`, `GET /tutorials/export`.

Both stream: the import reads the request body chunk by chunk into `tutorials.transfer`
(batches of COPY, one transaction each), the export sends the COPY's output as it arrives. Memory
stays flat whatever the size, and a connection is held only while a batch (or the export's one
COPY) runs.

The import answers 200 with a summary whenever it could read the body as what its Content-Type
says: rejected rows (with line and reason), an early stop (`max_errors`) are results, listed in
the summary, not errors of the request — the good rows are in. It answers problem+json before
touching the database for a body it cannot read at all: 415 for another Content-Type or charset,
400 for a CSV body whose first line is not a header of the published form. The CSV header rule
is published as the body's `pattern` (the column names, lower case, separated by commas, `name`
required, each at most once, any order), and enforced exactly, so clients and tools can trust the
document both ways. NDJSON bodies have no header: every line is a row.

Body size: the service's `max_body_bytes` limit (for JSON requests) does not apply here: an
import streams with flat memory, so it has its own, far larger `max_import_bytes` (512 MiB by
default). A body announced larger is refused before a byte is read; a chunked one that grows
past it stops the import with 413, and the batches committed before that stay committed.

Bounds: an import holds two batches at most, each at most `import_batch_bytes` of text, and
at most `max_concurrent_imports` run at once (one more is a 503 with Retry-After, before its
body is read). An export whose client reads nothing for `export_stall_timeout` seconds is
stopped: its COPY ends, its database connection is freed, its HTTP connection is closed.

CSV is safe in a spreadsheet: the export puts a `'` before a cell that a spreadsheet would run
as a formula, and the import takes it off (`tutorials.transfer.readers.restore_cell`);
`?csv=raw` turns both off.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tutorials.api.bodies import require_media_type
from tutorials.api.openapi import problems
from tutorials.api.params import CsvMode, MaxErrors, SearchText, Tags
from tutorials.api.problems import located_in_query
from tutorials.api.routes import DatabaseDep
from tutorials.schemas import compile_pattern
from tutorials.transfer import (
    MEDIA_TYPES,
    ExportFormat,
    ExportStalled,
    ImportSummary,
    OnConflict,
    RowError,
    SourceRow,
    import_rows,
    iter_export,
)
from tutorials.transfer.readers import CSV_COLUMNS, read_csv, read_ndjson

logger = logging.getLogger("tutorials.api")

router = APIRouter(tags=["bulk transfer"])

IMPORT_PATH = "/tutorials/import"
EXPORT_PATH = "/tutorials/export"

CSV = "text/csv"
NDJSON = "application/x-ndjson"
IMPORT_TYPES = frozenset({CSV, NDJSON})
#: Characters of an error's original text repeated in the summary.
ERROR_TEXT_MAX = 1000


def _headers() -> list[str]:
    """Every accepted CSV header: `name` plus any of the other columns, each once, any order."""
    others = [column for column in CSV_COLUMNS if column != "name"]
    found = [
        ",".join(order)
        for size in range(len(others) + 1)
        for chosen in itertools.combinations(others, size)
        for order in itertools.permutations(("name", *chosen))
    ]
    return sorted(found, key=lambda header: (-len(header), header))  # longest first


#: The CSV body's first line, published as the body schema's `pattern` (ECMAScript and Python
#: agree on it: `$` only follows the last alternative, where the body ends after the header).
CSV_HEADER_PATTERN = "^\ufeff?(?:" + "|".join(_headers()) + ")(?:\\r?\\n|$)"
_CSV_HEADER = compile_pattern(CSV_HEADER_PATTERN)
#: The longest first line worth reading to check the header (BOM, header, CRLF).
_HEADER_BYTES_MAX = 3 + max(len(header) for header in _headers()) + 2


class ImportRowError(BaseModel):
    """A rejected row."""

    line: int = Field(description="Its line in the body (1-based; a CSV record: its first).")
    reason: str = Field(description="Why it was rejected.")
    text: str | None = Field(description=f"The row as sent (at most {ERROR_TEXT_MAX} chars).")


class ImportResult(BaseModel):
    """What the import did: every row read lands in exactly one of the counters."""

    rows: int = Field(description="Rows read.")
    inserted: int = Field(description="New tutorials.")
    updated: int = Field(description="Stored tutorials (same url) changed: version + 1.")
    unchanged: int = Field(description="Rows equal to what was stored (on_conflict=update).")
    skipped: int = Field(description="Rows already stored, left alone (on_conflict=skip).")
    duplicates: int = Field(description="Rows superseded by another with the same key.")
    rejected: int = Field(description="Rows refused (invalid, or conflicting under error).")
    stopped: str | None = Field(description="Why the import stopped early, or null.")
    unread_lines: int = Field(
        description="Lines after the point where the body broke off (a CSV quote never "
        "closed), which could not be read as rows; 0 when it did not."
    )
    errors: list[ImportRowError] = Field(description="The first 1000 rejected rows.")


def _clean(text: str | None) -> str | None:
    """Bytes that were not UTF-8 came in as lone surrogates: show them as U+FFFD."""
    if text is None:
        return None
    text = text[:ERROR_TEXT_MAX]
    return text.encode("utf-8", "replace").decode("utf-8")


def _result(summary: ImportSummary) -> bytes:
    return (
        ImportResult(
            rows=summary.rows,
            inserted=summary.inserted,
            updated=summary.updated,
            unchanged=summary.unchanged,
            skipped=summary.skipped,
            duplicates=summary.duplicates,
            rejected=summary.rejected,
            stopped=summary.stopped,
            unread_lines=summary.unread_lines,
            errors=[
                ImportRowError(
                    line=error.line, reason=_clean(error.reason) or "", text=_clean(error.text)
                )
                for error in summary.errors
            ],
        )
        .model_dump_json()
        .encode()
    )


class ImportSlots:
    """At most `limit` imports at once in this process: each holds two batches of memory and
    a connection per batch. One more is refused at once (503, Retry-After), not queued: its
    client is holding a body we would otherwise buffer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    @contextmanager
    def take(self, retry_after: int) -> Iterator[None]:
        if self.running >= self.limit:
            raise HTTPException(
                503,
                f"{self.running} of {self.limit} imports are running already, the most this "
                "service runs at once: send this one again later",
                # the body is not read: the connection cannot carry another request
                headers={"Retry-After": str(retry_after), "Connection": "close"},
            )
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1


async def _checked_csv(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body, after checking (before any row is read) that it starts with a valid header."""
    head = b""
    async for chunk in body:
        head += chunk
        if b"\n" in head or len(head) > _HEADER_BYTES_MAX:
            break
    first = head.split(b"\n", 1)[0] + (b"\n" if b"\n" in head else b"")
    try:
        text = first[: _HEADER_BYTES_MAX + 1].decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not _CSV_HEADER.search(text):
        raise HTTPException(
            400,
            "a CSV body starts with a header line naming its columns: name (required), url, "
            "description, tags, in lower case, separated by commas, each at most once",
        )

    async def stream() -> AsyncIterator[bytes]:
        yield head
        async for chunk in body:
            yield chunk

    return stream()


#: The streamed body, documented by hand: FastAPI documents the bodies it reads itself, and
#: this one must stream (it is read chunk by chunk, never whole).
IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            CSV: {
                "schema": {
                    "type": "string",
                    "pattern": CSV_HEADER_PATTERN,
                    "description": "A header line, then one tutorial per record; tags "
                    "separated by `;`; empty url / description mean none.",
                }
            },
            NDJSON: {
                "schema": {
                    "type": "string",
                    "description": "One JSON object per line with the fields of TutorialCreate.",
                }
            },
        },
    },
}

ImportConflicts = Annotated[
    OnConflict,
    Query(
        description="A row whose url is stored already: `update` it (only if something "
        "differs; version + 1), `skip` it, or reject it as an `error` (the run goes on)."
    ),
]
ImportCsv = Annotated[
    CsvMode,
    Query(
        description="`safe`: take off the `'` the export puts before a name, description or "
        "tags cell that begins with `'`s and then `=`, `+`, `-`, `@`, a tab or a carriage "
        "return. `raw`: cells as they are."
    ),
]


async def _import_media_type(request: Request) -> None:
    """415 before anything else is read (a dependency runs before the parameters)."""
    require_media_type(request, IMPORT_TYPES, "Accept-Post")


@router.post(
    IMPORT_PATH,
    summary="Import tutorials in bulk (CSV or NDJSON)",
    description=(
        "Streams the body into the catalog in batches (one transaction each), validating every "
        "row like `POST /tutorials`. Rows with a url are upserted by it and a url-less row "
        "identical to a stored one is not added again: sending the same body twice changes "
        "nothing. Bad rows are reported in the summary with their line; the good ones are "
        "imported. If the request fails half-way (503, a lost connection), the batches "
        "committed stay: send the same body again."
    ),
    response_model=ImportResult,
    responses={
        200: {"description": "The summary."},
        **problems(400, 413, 415, 422, 503),
    },
    dependencies=[Depends(_import_media_type)],
    openapi_extra=IMPORT_BODY,
)
async def import_tutorials(
    request: Request,
    database: DatabaseDep,
    on_conflict: ImportConflicts = "update",
    max_errors: MaxErrors = None,
    csv: ImportCsv = "safe",
) -> Response:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    state = request.app.state
    slots: ImportSlots = state.import_slots
    with slots.take(state.retry_after_seconds):
        rows: AsyncIterator[SourceRow | RowError]
        if media_type == CSV:
            rows = read_csv(await _checked_csv(request.stream()), raw_csv=csv == "raw")
        else:
            rows = read_ndjson(request.stream())
        summary = await import_rows(
            database,
            rows,
            on_conflict=on_conflict,
            max_errors=max_errors,
            batch_bytes=state.import_batch_bytes,
        )
    return Response(_result(summary), media_type="application/json")


_EXPORT_ITEM = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "url": {"type": ["string", "null"]},
        "description": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "url", "description", "tags"],
}

ExportFormatParam = Annotated[
    ExportFormat,
    Query(
        alias="format",
        description="csv, ndjson (one JSON object per line), json (one array), or backup: "
        'NDJSON with ids, timestamps and versions after a `{"tutorials_backup":1}` line, for '
        "`tutorials restore` (an empty catalog gets back exactly these rows).",
    ),
]
ExportCsv = Annotated[
    CsvMode,
    Query(
        description="`safe`: a name, description or tags cell that a spreadsheet would run as "
        "a formula (it begins with `=`, `+`, `-`, `@`, a tab or a carriage return, or with "
        "`'`s and then one of those) gets a `'` in front, which the import takes off. `raw`: "
        "cells as stored (import them with `csv=raw`)."
    ),
]
_FILENAMES = {
    "csv": "tutorials.csv",
    "ndjson": "tutorials.ndjson",
    "json": "tutorials.json",
    "backup": "tutorials-backup.ndjson",
}


@router.get(
    EXPORT_PATH,
    summary="Export tutorials in bulk (CSV, NDJSON or JSON)",
    description=(
        "Streams every tutorial (or those carrying every `tag` and matching `q`), oldest "
        "first, from one consistent snapshot, in a form `POST /tutorials/import` reads back "
        "unchanged. CSV: header `name,url,description,tags`, tags separated by `;`."
    ),
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The tutorials, streamed.",
            "content": {
                MEDIA_TYPES["csv"]: {"schema": {"type": "string"}},
                MEDIA_TYPES["ndjson"]: {"schema": {"type": "string"}},
                MEDIA_TYPES["json"]: {"schema": {"type": "array", "items": _EXPORT_ITEM}},
            },
        },
        **problems(422, 503),
    },
)
async def export_tutorials(
    request: Request,
    database: DatabaseDep,
    export_format: ExportFormatParam = "csv",
    tag: Tags = [],  # noqa: B006 - FastAPI copies defaults; a list documents the parameter
    q: SearchText = None,
    csv: ExportCsv = "safe",
) -> Response:
    stall = request.app.state.export_stall_timeout
    with located_in_query():
        stream = iter_export(
            database,
            format=export_format,
            tags=tag,
            query=q,
            stall_timeout=stall,
            raw_csv=csv == "raw",
        )
        # Start the export before answering: a database that is down is a clean 503, not a
        # 200 cut short.
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in stream:
                yield chunk
        except ExportStalled:
            raise _ClientStalled from None  # the client's stall, seen from the export's side
        finally:
            await stream.aclose()

    filename = _FILENAMES[export_format]
    return StalledClientStream(
        body(),
        stall,
        media_type=MEDIA_TYPES[export_format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


class _ClientStalled(Exception):
    """The client took nothing of the response for the stall timeout."""


class StalledClientStream(StreamingResponse):
    """A streamed response given up when its client stops reading.

    Each `send` may wait (the server's flow control holds it while the client's socket is
    full) at most `stall_timeout` seconds. Past that the response ends unfinished: uvicorn
    closes the connection, and closing the body closes the export, whose COPY stops through
    its sink and frees its database connection (`iter_export` has the same deadline for a
    full queue, so the connection is freed even while this send is still waiting).
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        stall_timeout: float,
        *,
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.stall_timeout = stall_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stall = self.stall_timeout

        async def bounded_send(message: Message) -> None:
            try:
                async with asyncio.timeout(stall):
                    await send(message)
            except TimeoutError:
                raise _ClientStalled from None

        try:
            await super().__call__(scope, receive, bounded_send)
        except _ClientStalled:
            logger.warning(
                "export stopped: the client read nothing for %g s; closing its connection", stall
            )
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
