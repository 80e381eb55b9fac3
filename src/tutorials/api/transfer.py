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
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse

from tutorials.api.bodies import TAG_PATTERN, TEXT_PATTERN, compile_pattern, require_media_type
from tutorials.api.openapi import problems, query
from tutorials.api.plain import PlainRoute
from tutorials.api.problems import problem_response
from tutorials.api.routes import database_of, last_param
from tutorials.api.security import require_writer
from tutorials.errors import FieldError, InvalidInput
from tutorials.schemas import QUERY_MAX, TAG_MAX, TAGS_MAX, check_query, check_tags
from tutorials.transfer import (
    EXPORT_FORMATS,
    MEDIA_TYPES,
    ON_CONFLICT_MODES,
    ImportSummary,
    OnConflict,
    RowError,
    SourceRow,
    import_rows,
    iter_export,
)
from tutorials.transfer.readers import CSV_COLUMNS, read_csv, read_ndjson

router = APIRouter(tags=["bulk transfer"], route_class=PlainRoute)

IMPORT_PATH = "/tutorials/import"
EXPORT_PATH = "/tutorials/export"
#: Paths whose request bodies stream and must not be capped by the JSON body limit.

CSV = "text/csv"
NDJSON = "application/x-ndjson"
IMPORT_TYPES = frozenset({CSV, NDJSON})
#: Characters of an error's original text repeated in the summary.
ERROR_TEXT_MAX = 1000
MAX_ERRORS_LIMIT = 2**31 - 1


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


def _invalid(name: str, message: str) -> InvalidInput:
    return InvalidInput(f"{name}: {message}", [FieldError(("query", name), message)])


def _on_conflict(raw: str | None) -> OnConflict:
    for mode in ON_CONFLICT_MODES:
        if raw == mode:
            return mode
    if raw is None:
        return "update"
    raise _invalid("on_conflict", f"must be one of {', '.join(ON_CONFLICT_MODES)}")


_COUNT = re.compile(r"[0-9]{1,10}")


def _max_errors(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _COUNT.fullmatch(raw) or int(raw) > MAX_ERRORS_LIMIT:
        raise _invalid("max_errors", f"must be an integer from 0 to {MAX_ERRORS_LIMIT}")
    return int(raw)


_TAG = compile_pattern(TAG_PATTERN)
_TEXT = compile_pattern(TEXT_PATTERN)


def _tags(raw: list[str]) -> list[str]:
    errors = []
    if len(raw) > TAGS_MAX:
        errors.append(FieldError(("query", "tag"), f"at most {TAGS_MAX} tags"))
    for index, tag in enumerate(raw):
        if len(tag) > TAG_MAX or not _TAG.search(tag):
            errors.append(FieldError(("query", "tag", index), "not a valid tag"))
    if errors:
        raise InvalidInput("invalid tag filter", errors)
    return check_tags(raw)


def _search_text(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None  # an empty search box means "everything"
    if len(raw) > QUERY_MAX or not _TEXT.search(raw):
        raise _invalid("q", f"must be at most {QUERY_MAX} characters, without NUL")
    return check_query(raw)


def _format(raw: str | None) -> str:
    if raw is None:
        return "csv"
    if raw not in EXPORT_FORMATS:
        raise _invalid("format", f"must be one of {', '.join(EXPORT_FORMATS)}")
    return raw


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
    "parameters": [
        query(
            "on_conflict",
            {"type": "string", "enum": list(ON_CONFLICT_MODES), "default": "update"},
            "A row whose url is stored already: `update` it (only if something differs; "
            "version + 1), `skip` it, or reject it as an `error` (the run goes on).",
        ),
        query(
            "max_errors",
            {"type": "integer", "minimum": 0, "maximum": MAX_ERRORS_LIMIT},
            "Stop once more than this many rows were rejected (rows before stay imported).",
        ),
    ],
}


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
    responses={200: {"description": "The summary."}, **problems(400, 413, 415, 422, 503)},
    openapi_extra=IMPORT_BODY,
)
async def import_tutorials(request: Request) -> Response:
    require_writer(request)
    require_media_type(request, IMPORT_TYPES, "Accept-Post")
    on_conflict = _on_conflict(last_param(request, "on_conflict"))
    max_errors = _max_errors(last_param(request, "max_errors"))
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    rows: AsyncIterator[SourceRow | RowError]
    if media_type == CSV:
        rows = read_csv(await _checked_csv(request.stream()))
    else:
        rows = read_ndjson(request.stream())
    summary = await import_rows(
        database_of(request), rows, on_conflict=on_conflict, max_errors=max_errors
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
    openapi_extra={
        "parameters": [
            query(
                "format",
                {"type": "string", "enum": list(EXPORT_FORMATS), "default": "csv"},
                "csv, ndjson (one JSON object per line) or json (one array).",
            ),
            query(
                "tag",
                {
                    "type": "array",
                    "maxItems": TAGS_MAX,
                    "items": {"type": "string", "maxLength": TAG_MAX, "pattern": TAG_PATTERN},
                },
                "Only tutorials carrying this tag (repeat for several: all must match).",
                explode=True,
            ),
            query(
                "q",
                {"type": "string", "maxLength": QUERY_MAX, "pattern": TEXT_PATTERN},
                "Only tutorials matching this full-text search. Empty means no search.",
            ),
        ]
    },
)
async def export_tutorials(request: Request) -> Response:
    format = _format(last_param(request, "format"))
    tags = _tags(request.query_params.getlist("tag"))
    text = _search_text(last_param(request, "q"))
    stream = iter_export(database_of(request), format=format, tags=tags, query=text)
    # Start the export before answering: a database that is down is a clean 503, not a 200
    # cut short.
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
        finally:
            await stream.aclose()

    extension = {"csv": "csv", "ndjson": "ndjson", "json": "json"}[format]
    return StreamingResponse(
        body(),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="tutorials.{extension}"'},
    )


def _not_allowed(allow: str, *, write: bool) -> Callable[[Request], Awaitable[Response]]:
    """405 with the right `Allow` for the other methods on our paths.

    Without it, `/tutorials/{tutorial_id}`'s routes (GET, PATCH, DELETE) would claim
    `/tutorials/import` and `/tutorials/export` for those methods and answer 422 ("not an
    integer") where 405 is the truth. The problem is built here, not raised, so the `Allow`
    header names only this path's own methods.
    """

    async def refuse(request: Request) -> Response:
        if write:
            require_writer(request)  # a write method needs the token first (401 before 405)
        detail = f"{request.method} is not allowed here; allowed: {allow}"
        return problem_response(request.scope, 405, detail, headers={"Allow": allow})

    return refuse


_WRITES = ("POST", "PUT", "PATCH", "DELETE")
_READS = ("GET", "HEAD", "OPTIONS")
for _path, _own in ((IMPORT_PATH, "POST"), (EXPORT_PATH, "GET")):
    router.add_api_route(
        _path,
        _not_allowed(_own, write=True),
        methods=[method for method in _WRITES if method != _own],
        include_in_schema=False,
    )
    router.add_api_route(
        _path,
        _not_allowed(_own, write=False),
        methods=[method for method in _READS if method != _own],
        include_in_schema=False,
    )
