"""The tutorial routes: validate at the edge, one unit of work, answer.

Each handler validates everything before touching the database (bodies and query values
against the published schemas, then the domain models), runs exactly one unit of work and
serialises the stored row once (`TutorialRead` from the row, straight to JSON bytes; the
`response_model` declarations only document). A connection is held only while the unit of
work runs, not for the whole request.

The units of work go through `Database.fast`: each is one statement in autocommit (or
statements each correct on its own: a conditional write, then, only when it matched nothing, a
read saying why), so the statement has committed before the handler answers — a 2xx is
durable — at one round trip instead of BEGIN + statement + COMMIT.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from pydantic import TypeAdapter
from starlette.responses import Response

from tutorials import repository
from tutorials.api import etags
from tutorials.api.bodies import (
    JSON_TYPES,
    MERGE_PATCH_TYPES,
    TAG_PATTERN,
    TEXT_PATTERN,
    compile_pattern,
    parse_create,
    parse_patch,
    read_json,
    require_media_type,
)
from tutorials.api.openapi import (
    CURSOR_MAX,
    body,
    header,
    problems,
    query,
    with_etag,
)
from tutorials.api.plain import PlainRoute
from tutorials.api.security import require_writer
from tutorials.db.session import Database
from tutorials.errors import FieldError, InvalidInput, NotFound, StaleVersion
from tutorials.models import Tutorial
from tutorials.schemas import (
    MAX_ID,
    PAGE_MAX,
    QUERY_MAX,
    TAG_MAX,
    TAGS_MAX,
    TutorialPage,
    TutorialRead,
    check_query,
    check_tags,
)

router = APIRouter(tags=["tutorials"], route_class=PlainRoute)

JSON = "application/json"
DEFAULT_LIMIT = repository.DEFAULT_PAGE

#: Digits only, at routing: `/tutorials/import` or `/tutorials/export` are other resources
#: (a wrong method there is a 405, not a 422 about an id), and `/tutorials/abc` names nothing
#: (404). Digit strings beyond bigint still reach the handler and are refused with 422.
ITEM_PATH = "/tutorials/{tutorial_id:int}"

#: The id parameter, documented here and parsed by `_item_id` rather than declared in the
#: handlers' signatures: FastAPI's dependency resolution for one path parameter cost ≈ 100 µs
#: per request, a sixth of a whole GET (benchmarks/RESULTS.md).
ID_PARAMETER = {
    "name": "tutorial_id",
    "in": "path",
    "required": True,
    "description": "The tutorial's id (a positive bigint).",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}

_PAGE = TypeAdapter(TutorialPage)
_LIMIT = re.compile(r"[0-9]{1,10}")
_TAG = compile_pattern(TAG_PATTERN)
_TEXT = compile_pattern(TEXT_PATTERN)
CURSOR_PATTERN = "^[A-Za-z0-9_-]*$"
#: A tag filter, or an empty value (`?tag=`, as a form leaves it), which is ignored.
TAG_FILTER_PATTERN = "^(?:" + TAG_PATTERN[1:-1] + ")?$"
_CURSOR = compile_pattern(CURSOR_PATTERN)

IF_MATCH = header(
    "If-Match",
    'Only act if the tutorial is still at one of these entity tags (`"3"`, a list, or `*`); '
    "otherwise 412.",
)
IF_NONE_MATCH = header(
    "If-None-Match", "Answer 304 Not Modified if the tutorial is still at one of these tags."
)


def _item_id(request: Request) -> int:
    """The path's id: digits by routing (`{tutorial_id:int}`), in range by this check."""
    tutorial_id: int = request.path_params["tutorial_id"]
    if not 1 <= tutorial_id <= MAX_ID:
        message = f"tutorial_id must be an integer from 1 to {MAX_ID}"
        raise InvalidInput(message, [FieldError(("path", "tutorial_id"), message)])
    return tutorial_id


def database_of(request: Request) -> Database:
    """The app's `Database` (set by the lifespan, or injected by whoever built the app)."""
    database: Database = request.app.state.database
    return database


def _json(read: TutorialRead, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(read.model_dump_json().encode(), status, headers=headers, media_type=JSON)


@router.post(
    "/tutorials",
    status_code=201,
    summary="Add a tutorial",
    response_model=TutorialRead,
    responses={
        201: with_etag("The tutorial as stored.", location=True),
        **problems(400, 409, 413, 415, 422, 503),
    },
    openapi_extra=body("TutorialCreate", JSON_TYPES),
)
async def create_tutorial(request: Request) -> Response:
    require_writer(request)
    require_media_type(request, JSON_TYPES, "Accept-Post")
    values = parse_create(await read_json(request)).model_dump()
    stored = await database_of(request).fast(lambda connection: repository.add(connection, values))
    read = TutorialRead.model_validate(stored)
    headers = {"Location": f"/tutorials/{read.tutorial_id}", "ETag": etags.etag(read.version)}
    return _json(read, 201, headers)


@router.get(
    ITEM_PATH,
    summary="Get one tutorial",
    response_model=TutorialRead,
    responses={
        200: with_etag("The tutorial."),
        304: {
            "description": "Not modified: your copy (If-None-Match) is current.",
            "headers": with_etag("")["headers"],
        },
        **problems(404, 422, 503),
    },
    openapi_extra={"parameters": [ID_PARAMETER, IF_NONE_MATCH]},
)
async def get_tutorial(request: Request) -> Response:
    tutorial_id = _item_id(request)
    found = await database_of(request).fast(
        lambda connection: repository.get(connection, tutorial_id), idempotent=True
    )
    if found is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    read = TutorialRead.model_validate(found)
    tag = etags.etag(read.version)
    condition = etags.if_none_match(request.headers.get("if-none-match"))
    if condition is not None and condition.matches_weak(read.version):
        return Response(status_code=304, headers={"ETag": tag})
    return _json(read, headers={"ETag": tag})


def last_param(request: Request, name: str) -> str | None:
    """A query parameter's last value (`?limit=5&limit=10` is 10), None when absent."""
    values = request.query_params.getlist(name)
    return values[-1] if values else None


def _limit(raw: str | None) -> int:
    if not raw:  # absent, or empty as a form leaves it
        return DEFAULT_LIMIT
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= PAGE_MAX:
        message = f"limit must be an integer from 1 to {PAGE_MAX}"
        raise InvalidInput(message, [FieldError(("query", "limit"), message)])
    return int(raw)


def _tags(raw: Sequence[str]) -> list[str]:
    errors = []
    if len(raw) > TAGS_MAX:
        errors.append(FieldError(("query", "tag"), f"at most {TAGS_MAX} tags"))
    for index, tag in enumerate(raw):
        if tag and (len(tag) > TAG_MAX or not _TAG.search(tag)):
            errors.append(FieldError(("query", "tag", index), "not a valid tag"))
    if errors:
        raise InvalidInput("invalid tag filter", errors)
    return check_tags([tag for tag in raw if tag])  # `?tag=`: an empty filter box, ignored


def _search_text(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None  # an empty search box means "everything"
    if len(raw) > QUERY_MAX or not _TEXT.search(raw):
        message = f"q must be at most {QUERY_MAX} characters, without NUL"
        raise InvalidInput(message, [FieldError(("query", "q"), message)])
    return check_query(raw)


def _cursor(raw: str | None) -> str | None:
    if not raw:
        return None
    if len(raw) > CURSOR_MAX or not _CURSOR.search(raw):
        message = "cursor must be a next_cursor this API returned"
        raise InvalidInput(message, [FieldError(("query", "cursor"), message)])
    return raw


@router.get(
    "/tutorials",
    summary="List or search tutorials",
    description=(
        "Keyset-paginated: pass `next_cursor` back as `cursor` for the next page (null on the "
        'last). Without `q`, oldest first; with `q` (web-search syntax: words, "phrases", '
        "-not, or), best match first; a query matching more tutorials than the server's "
        "`search_candidates` (2,000 by default) is ranked among the first that many found. "
        "`tag` filters to tutorials carrying every given tag."
    ),
    response_model=TutorialPage,
    responses={
        **problems(422, 503),
        404: {"description": "The cursor names no page of this listing."},
    },
    openapi_extra={
        "parameters": [
            query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": DEFAULT_LIMIT},
                "Page size.",
                allow_empty=True,
            ),
            query(
                "cursor",
                {"type": "string", "maxLength": CURSOR_MAX, "pattern": CURSOR_PATTERN},
                "The `next_cursor` of the previous page (opaque: one this API did not issue "
                "is a 404, or a 422 when it is not even made of cursor characters). Empty "
                "means the first page.",
            ),
            query(
                "tag",
                {
                    "type": "array",
                    "maxItems": TAGS_MAX,
                    "items": {
                        "type": "string",
                        "maxLength": TAG_MAX,
                        "pattern": TAG_FILTER_PATTERN,
                    },
                },
                "Only tutorials carrying this tag (repeat for several: all must match). "
                "Empty values are ignored.",
                explode=True,
            ),
            query(
                "q",
                {"type": "string", "maxLength": QUERY_MAX, "pattern": TEXT_PATTERN},
                "Full-text search, ranked. Empty (or blank) means no search.",
            ),
        ]
    },
)
async def list_tutorials(request: Request) -> Response:
    limit = _limit(last_param(request, "limit"))
    cursor = _cursor(last_param(request, "cursor"))
    tags = _tags(request.query_params.getlist("tag"))
    text = _search_text(last_param(request, "q"))
    candidates: int = request.app.state.search_candidates

    async def work(session: repository.Executor) -> repository.Page:
        if text is None:
            return await repository.list_page(session, limit=limit, cursor=cursor, tags=tags)
        return await repository.search(
            session, text, limit=limit, cursor=cursor, tags=tags, candidates=candidates
        )

    try:
        page = await database_of(request).fast(work, idempotent=True)
    except InvalidInput:
        # Only the cursor is left to refuse: well formed, but it names no page of this listing
        # (tampered with, or from another query). No such page: 404, like an unknown id.
        raise NotFound(
            "the cursor does not point into this listing (altered, or from another query): "
            "start again without it"
        ) from None
    document = _PAGE.validate_python(
        {"items": page.items, "next_cursor": page.next_cursor}, from_attributes=True
    )
    return Response(_PAGE.dump_json(document), media_type=JSON)


async def _expected_version(
    session: repository.Executor, tutorial_id: int, condition: etags.EntityTags | None
) -> int | None:
    """The version an `If-Match` pins the write to (None: unconditional).

    A single tag is checked by the write itself (one statement). A list needs the current
    version first; the write is still conditioned on it, so a concurrent change in between
    is still a 412, never a lost update.
    """
    if condition is None or condition.any:
        return None
    versions = condition.versions()
    if len(versions) == 1 and not condition.weak and len(condition.strong) == 1:
        return next(iter(versions))
    current = await repository.get(session, tutorial_id)
    if current is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    if current.version not in versions:
        raise StaleVersion(
            f"tutorial {tutorial_id} is at version {current.version}, which If-Match does not name",
            current.version,
        )
    return current.version


async def _patch(
    session: repository.Executor,
    tutorial_id: int,
    changes: dict[str, Any],
    condition: etags.EntityTags | None,
) -> Tutorial:
    expected = await _expected_version(session, tutorial_id, condition)
    if changes:
        return await repository.update(session, tutorial_id, changes, expected_version=expected)
    current = await repository.get(session, tutorial_id)  # an empty patch changes nothing
    if current is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    if expected is not None and current.version != expected:
        raise StaleVersion(
            f"tutorial {tutorial_id} is at version {current.version}, not {expected}",
            current.version,
        )
    return current


@router.patch(
    ITEM_PATH,
    summary="Change a tutorial (JSON merge patch)",
    description=(
        "RFC 7396 merge patch: fields left out stay as they are, `null` clears a field "
        "(`name` cannot be cleared), `tags` is replaced as a whole. With `If-Match`, only "
        "applied if the tutorial is still at that version (else 412)."
    ),
    response_model=TutorialRead,
    responses={
        200: with_etag("The tutorial as stored after the change."),
        **problems(400, 404, 409, 412, 413, 415, 422, 503),
    },
    openapi_extra={
        **body("TutorialPatch", MERGE_PATCH_TYPES),
        "parameters": [ID_PARAMETER, IF_MATCH],
    },
)
async def patch_tutorial(request: Request) -> Response:
    require_writer(request)
    tutorial_id = _item_id(request)
    require_media_type(request, MERGE_PATCH_TYPES, "Accept-Patch")
    changes = parse_patch(await read_json(request))
    condition = etags.if_match(request.headers.get("if-match"))
    stored = await database_of(request).fast(
        lambda connection: _patch(connection, tutorial_id, changes, condition)
    )
    read = TutorialRead.model_validate(stored)
    return _json(read, headers={"ETag": etags.etag(read.version)})


async def _delete(
    session: repository.Executor, tutorial_id: int, condition: etags.EntityTags | None
) -> None:
    expected = await _expected_version(session, tutorial_id, condition)
    if not await repository.delete(session, tutorial_id, expected_version=expected):
        raise NotFound(f"tutorial {tutorial_id} not found")


@router.delete(
    ITEM_PATH,
    status_code=204,
    summary="Delete a tutorial",
    response_class=Response,
    responses={204: {"description": "Deleted."}, **problems(400, 404, 412, 422, 503)},
    openapi_extra={"parameters": [ID_PARAMETER, IF_MATCH]},
)
async def delete_tutorial(request: Request) -> Response:
    require_writer(request)
    tutorial_id = _item_id(request)
    condition = etags.if_match(request.headers.get("if-match"))
    await database_of(request).fast(lambda connection: _delete(connection, tutorial_id, condition))
    return Response(status_code=204)
