"""The tutorial routes, declared the way FastAPI's documentation shows.

Each route's signature is its whole contract: path, query and header parameters
(`tutorials.api.params`), the body as a model (`tutorials.api.bodies`), the database as a
dependency. FastAPI parses and validates all of it before the handler runs (a refusal is a 422
naming the parameter, rendered by `problems`), and writes the route's OpenAPI entry from the
same declarations. Writes need no check here: `security.WriteGuardMiddleware` has refused any
unsafe request without a token before routing.

A handler then runs exactly one use case of the service and serialises the stored row once
(`TutorialRead`, straight to JSON bytes by pydantic's serialiser) into a `Response` it returns
itself, which FastAPI sends as it is (its documented "return a Response directly"): the
`response_model` declarations document the answer without FastAPI validating it again. A
connection is held only while the use case runs, not for the whole request. Every use case is
committed before it returns (`tutorials.service`): a 2xx is durable.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, TypeAdapter
from starlette.responses import Response

from tutorials import service
from tutorials.api import etags
from tutorials.api.bodies import (
    JSON_TYPES,
    MERGE_PATCH_TYPES,
    TutorialCreate,
    TutorialPatch,
    json_body,
    media_types_of,
)
from tutorials.api.openapi import problems, with_etag
from tutorials.api.params import (
    Cursor,
    DryRunFlag,
    EverythingFlag,
    IfMatch,
    IfNoneMatch,
    Limit,
    PrefixFlag,
    SearchText,
    Sort,
    Tags,
    TutorialIdPath,
)
from tutorials.api.problems import located_in_query
from tutorials.db.database import Database
from tutorials.schemas import DEFAULT_PAGE, TutorialPage, TutorialRead, TutorialRecord

router = APIRouter(tags=["tutorials"])

JSON = "application/json"
#: Digits only, at routing: `/tutorials/import` or `/tutorials/export` are other resources
#: (a wrong method there is a 405, not a 422 about an id), and `/tutorials/abc` names nothing
#: (404). Digit strings beyond bigint reach the declaration and are refused with 422.
ITEM_PATH = "/tutorials/{tutorial_id:int}"
#: A tutorial carries a strong ETag, so a cache may keep it, but must ask again each time
#: (`If-None-Match`, answered 304 without a body while it is current). Everything else JSON is
#: `no-store` (`middleware`): it has no validator to ask with.
TUTORIAL_CACHE = "no-cache"

_PAGE = TypeAdapter(TutorialPage)
_READ = TypeAdapter(TutorialRead)


async def get_database(request: Request) -> Database:
    """The app's `Database` (set by the lifespan, or injected by whoever built the app)."""
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]


def _json(
    stored: TutorialRecord, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = _READ.dump_json(_READ.validate_python(stored, from_attributes=True))
    return Response(body, status, headers=headers, media_type=JSON)


def _tutorial_headers(version: int) -> dict[str, str]:
    return {"ETag": etags.etag(version), "Cache-Control": TUTORIAL_CACHE}


@router.post(
    "/tutorials",
    status_code=201,
    summary="Add a tutorial",
    response_model=TutorialRead,
    responses={
        201: with_etag("The tutorial as stored.", location=True),
        **problems(400, 409, 413, 415, 422, 503),
    },
    dependencies=[Depends(json_body(JSON_TYPES, "Accept-Post"))],
)
async def create_tutorial(data: TutorialCreate, database: DatabaseDep) -> Response:
    stored = await service.create(database, data)
    headers = {"Location": f"/tutorials/{stored.tutorial_id}", "ETag": etags.etag(stored.version)}
    return _json(stored, 201, headers)


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
)
async def get_tutorial(
    tutorial_id: TutorialIdPath,
    database: DatabaseDep,
    if_none_match: IfNoneMatch = None,
) -> Response:
    found = await service.get(database, tutorial_id)
    headers = _tutorial_headers(found.version)
    condition = etags.if_none_match(if_none_match)
    if condition is not None and condition.matches_weak(found.version):
        return Response(status_code=304, headers=headers)
    return _json(found, headers=headers)


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
    responses=problems(422, 503),
)
async def list_tutorials(
    database: DatabaseDep,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    tag: Tags = [],  # noqa: B006 - FastAPI copies defaults; a list documents the parameter
    q: SearchText = None,
    sort: Sort = "oldest",
    prefix: PrefixFlag = False,
) -> Response:
    with located_in_query():
        if q is None:
            page = await service.list_page(
                database, limit=limit, cursor=cursor, tags=tag, order=sort
            )
        else:
            page = await service.search(
                database, q, limit=limit, cursor=cursor, tags=tag, prefix=prefix
            )
    document = _PAGE.validate_python(
        {"items": page.items, "next_cursor": page.next_cursor}, from_attributes=True
    )
    return Response(_PAGE.dump_json(document), media_type=JSON)


class BulkDeleteResult(BaseModel):
    """What a bulk delete did (or, on a dry run, would do)."""

    matched: int = Field(description="How many tutorials the filter selects.")
    deleted: int = Field(description="How many were deleted: all those matched, or 0 on a dry run.")


_BULK = TypeAdapter(BulkDeleteResult)


@router.delete(
    "/tutorials",
    summary="Delete the tutorials a filter selects",
    description=(
        "Deletes, in one statement, every tutorial carrying every `tag` and matching `q` (the "
        "filter of `GET /tutorials/export`: export first to keep a copy). With neither, "
        "nothing is deleted unless `all=true` says every tutorial is meant (and `all=true` "
        "with a filter is refused). `dry_run=true` deletes nothing and says how many would "
        "be deleted."
    ),
    response_model=BulkDeleteResult,
    responses={200: {"description": "How many were matched and deleted."}, **problems(422, 503)},
)
async def delete_tutorials(
    database: DatabaseDep,
    tag: Tags = [],  # noqa: B006 - see list_tutorials
    q: SearchText = None,
    everything: EverythingFlag = False,
    dry_run: DryRunFlag = False,
) -> Response:
    with located_in_query():
        count = await service.delete_matching(
            database, tags=tag, query=q, everything=everything, dry_run=dry_run
        )
    result = BulkDeleteResult(matched=count, deleted=0 if dry_run else count)
    return Response(_BULK.dump_json(result), media_type=JSON)


def _expected(if_match: str | None) -> service.Expected:
    """The versions an `If-Match` pins a write to (None: unconditional, or `*`)."""
    condition = etags.if_match(if_match)
    if condition is None or condition.any:
        return None
    return condition.versions()  # weak tags never match If-Match (strong comparison)


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
    dependencies=[Depends(json_body(MERGE_PATCH_TYPES, "Accept-Patch"))],
    openapi_extra=media_types_of("TutorialPatch", MERGE_PATCH_TYPES),
)
async def patch_tutorial(
    tutorial_id: TutorialIdPath,
    patch: TutorialPatch,
    database: DatabaseDep,
    if_match: IfMatch = None,
) -> Response:
    stored = await service.update(database, tutorial_id, patch, expected=_expected(if_match))
    return _json(stored, headers={"ETag": etags.etag(stored.version)})


@router.delete(
    ITEM_PATH,
    status_code=204,
    summary="Delete a tutorial",
    response_class=Response,
    responses={204: {"description": "Deleted."}, **problems(400, 404, 412, 422, 503)},
)
async def delete_tutorial(
    tutorial_id: TutorialIdPath, database: DatabaseDep, if_match: IfMatch = None
) -> Response:
    await service.delete(database, tutorial_id, expected=_expected(if_match))
    return Response(status_code=204)


#: The routes that read a JSON body into a model, whose bodies `StrictJsonMiddleware` checks.
JSON_BODY_ROUTES = [
    route
    for route in router.routes
    if isinstance(route, APIRoute) and route.endpoint in (create_tutorial, patch_tutorial)
]
