"""What the routes read from the path, the query and the headers, each declared once.

These are FastAPI parameter declarations (`Annotated[..., Path()/Query()/Header()]`): the same
declaration parses the value, refuses it with a 422 naming it (`["query", "limit"]`), and
writes its entry in the OpenAPI document, so the document cannot drift from what is enforced.
Routes that share a parameter (the `tag` and `q` filters of listing, bulk delete and export)
share its declaration.

What a declaration enforces is the value's *shape* (digits, lengths, characters, choices); the
domain's rules (tags normalised and checked character by character, searches in NFC, cursors
tied to their listing) stay in the service, which every face calls, and its refusals are
located in the query by `problems.located_in_query`.

Two rules are stricter than pydantic's defaults on purpose:

- **Integers are digits.** Pydantic's lax mode reads `" 5"`, `"5.0"`, `"+5"` and `"1_000"` as
  integers; the document says `integer`, so a client (or a schema-driven tester) sending
  anything else is told so.
- **Flags are `true` or `false`.** Pydantic reads `yes`, `on`, `1`... as true; `all=true` empties
  the catalog, so only the words the document names are accepted.

`?limit=` (an empty form field) means the default page size, and the document says so
(`allowEmptyValue`, lifted from the schema by `openapi.build`). Empty `tag`, `q` and `cursor`
values are absent ones, within their published patterns.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Header, Path, Query
from pydantic import AfterValidator, BeforeValidator, Field

from tutorials.api.etags import LIST_PATTERN, MAX_ENTITY_TAGS
from tutorials.schemas import (
    DEFAULT_PAGE,
    MAX_ID,
    PAGE_MAX,
    QUERY_MAX,
    TAG_MAX,
    TAGS_MAX,
    TEXT_PATTERN,
    tag_pattern,
)

#: Characters of a cursor this API issues (it is opaque: the service checks the rest).
CURSOR_PATTERN = "^[A-Za-z0-9_-]*$"
CURSOR_MAX = 512
#: `max_errors` of an import: an int4, as the summary counts it.
MAX_ERRORS_LIMIT = 2**31 - 1

_DIGITS = re.compile(r"[0-9]+")


def _digits_only(value: object) -> object:
    if isinstance(value, str) and _DIGITS.fullmatch(value) is None:
        raise ValueError("must be a whole number written in digits")
    return value


def _blank_is_default(default: int) -> BeforeValidator:
    def blank_is_default(value: object) -> object:
        return default if value == "" else _digits_only(value)

    return BeforeValidator(blank_is_default)


def _true_or_false(value: object) -> object:
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value


def _blank_is_none(value: str | None) -> str | None:
    """An empty search box means no search."""
    return value if value is not None and value.strip() else None


def _tag_filter_schema(schema: dict[str, Any]) -> None:
    """A tag filter's pattern: the rule of stored tags, or empty (`?tag=`, as a form leaves it,
    which is ignored). Computed when the document is built, not at import: it enumerates
    Unicode (≈ 0.2 s), which only building the document should pay for."""
    schema["pattern"] = "^(?:" + tag_pattern()[1:-1] + ")?$"


# --- Path ------------------------------------------------------------------------------------

#: Digits only at routing (`{tutorial_id:int}` in the path): `/tutorials/import` is another
#: resource and `/tutorials/abc` names nothing (404). In range by this declaration (422).
TutorialIdPath = Annotated[
    int, Path(ge=1, le=MAX_ID, description="The tutorial's id (a positive bigint).")
]

# --- Query -----------------------------------------------------------------------------------

# A before-validator comes after the declaration it precedes at run time: placed before it, it
# would hide the bounds from the document (pydantic writes `ge` instead of `minimum`).
Limit = Annotated[
    int,
    Query(
        ge=1,
        le=PAGE_MAX,
        description=f"Page size, at most {PAGE_MAX} (more is refused with 422, not capped). "
        "Empty means the default.",
        json_schema_extra={"allowEmptyValue": True},
    ),
    _blank_is_default(DEFAULT_PAGE),
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX,
        pattern=CURSOR_PATTERN,
        description="The `next_cursor` of the previous page, for the same `q` and `tag`s "
        "(opaque: any other value, including one another listing returned, is a 422 naming "
        "`cursor`). Empty means the first page.",
    ),
]
_TagText = Annotated[str, Field(max_length=TAG_MAX + 16, json_schema_extra=_tag_filter_schema)]
Tags = Annotated[
    list[_TagText],
    Query(
        max_length=TAGS_MAX,
        description="Only tutorials carrying this tag (repeat for several: all must match). "
        "Empty values are ignored.",
    ),
]
SearchText = Annotated[
    Annotated[str, Field(max_length=QUERY_MAX, pattern=TEXT_PATTERN)] | None,
    AfterValidator(_blank_is_none),
    Query(
        description='Full-text search (web-search syntax: words, "phrases", -not, or), '
        "ranked. Empty (or blank) means no search.",
    ),
]


_Flag = BeforeValidator(_true_or_false)
EverythingFlag = Annotated[
    bool,
    Query(alias="all", description="Every tutorial: required when neither `tag` nor `q` is given."),
    _Flag,
]
DryRunFlag = Annotated[
    bool, Query(description="Count what would be deleted; delete nothing."), _Flag
]
CsvMode = Literal["safe", "raw"]

#: The orders of a listing (`service.ORDERS`; a test keeps the two equal).
Order = Literal["oldest", "newest", "name", "updated"]
Sort = Annotated[
    Order,
    Query(
        description="The order of a listing without `q`: `oldest` first (id order), `newest` "
        "first, by `name` (case-insensitive), or most recently `updated` first. Ignored with "
        "`q` (search results come best match first)."
    ),
]
PrefixFlag = Annotated[
    bool,
    Query(
        description="With `q`: read its last word as the beginning of a word (search as you "
        'type: "sqlalch" finds SQLAlchemy).'
    ),
    _Flag,
]

MaxErrors = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_ERRORS_LIMIT,
        description="Stop once more than this many rows were rejected (rows before stay imported).",
    ),
    BeforeValidator(_digits_only),
]

# --- Headers ---------------------------------------------------------------------------------

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Only act if the tutorial is still at one of these entity tags (`"3"`, a '
        "list, or `*`); otherwise 412. A value that is not such a list is a 400, more than "
        f"{MAX_ENTITY_TAGS} tags a 431 (read by `tutorials.api.etags`, which the pattern "
        "describes).",
        json_schema_extra={"pattern": LIST_PATTERN},
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="Answer 304 Not Modified if the tutorial is still at one of these tags.",
    ),
]
