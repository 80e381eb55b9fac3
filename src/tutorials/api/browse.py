"""What browsing needs beyond `GET /tutorials`: how many a listing holds, and the tag list.

- `GET /tutorials/count?tag=&q=&prefix=`: how many tutorials `GET /tutorials` with the same
  filter pages through (`{"count": n, "exact": true}`; a search counts at most the matches it
  ranks, `exact` false when there are more).
- `GET /tags?limit=`: the most used tags with how many tutorials carry each.

The listing's own `sort` and `prefix` parameters are declared with the others in
`api/params.py`. The web page is the first client of all of these; every use case is the
service's. Parameters are declared the FastAPI way, shared with the listing's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, TypeAdapter
from starlette.responses import Response

from tutorials import service
from tutorials.api.openapi import problems
from tutorials.api.params import PrefixFlag, SearchText, Tags
from tutorials.api.problems import located_in_query
from tutorials.api.routes import DatabaseDep

router = APIRouter(tags=["tutorials"])

JSON = "application/json"


# --- GET /tutorials/count -------------------------------------------------------------------


class FoundCount(BaseModel):
    """How many tutorials a listing or a search holds."""

    count: int = Field(description="How many (for a search, at most the matches it ranks).")
    exact: bool = Field(
        description="False when a search matched more than the server ranks "
        "(`search_candidates`): `count` is then that bound."
    )


_COUNT = TypeAdapter(FoundCount)


@router.get(
    "/tutorials/count",
    summary="Count what a listing or a search holds",
    description="How many tutorials `GET /tutorials` with the same `tag`, `q` and `prefix` "
    "pages through.",
    response_model=FoundCount,
    responses=problems(422, 503),
)
async def count_tutorials(
    database: DatabaseDep,
    tag: Tags = [],  # noqa: B006 - FastAPI copies defaults; a list documents the parameter
    q: SearchText = None,
    prefix: PrefixFlag = False,
) -> Response:
    with located_in_query():
        found = await service.count_found(database, tags=tag, query=q, prefix=prefix)
    return Response(
        _COUNT.dump_json(FoundCount(count=found.count, exact=found.exact)), media_type=JSON
    )


# --- GET /tags --------------------------------------------------------------------------------


class TagCount(BaseModel):
    """A tag and how many tutorials carry it."""

    tag: str
    count: int


class TagList(BaseModel):
    """The most used tags, most used first (ties by tag)."""

    items: list[TagCount]


_TAGS = TypeAdapter(TagList)


@router.get(
    "/tags",
    summary="The most used tags",
    description="Tags with how many tutorials carry each, most used first (ties by tag).",
    response_model=TagList,
    responses=problems(422, 503),
)
async def list_tags(
    database: DatabaseDep,
    limit: Annotated[
        int,
        Query(ge=1, le=service.TAGS_LISTED_MAX, description="How many tags, at most."),
    ] = service.TAGS_LISTED,
) -> Response:
    with located_in_query():
        counts = await service.tag_counts(database, limit=limit)
    document = TagList(items=[TagCount(tag=tag, count=count) for tag, count in counts])
    return Response(_TAGS.dump_json(document), media_type=JSON)
