"""What crosses the boundary: create / patch / read models and pages, validated before the database.

Everything a user can send is checked here, so that the database only ever sees values it can
store: PostgreSQL text cannot hold NUL bytes, asyncpg cannot encode lone surrogates, `name` is
varchar(255), ids are bigint. Each face (HTTP, CLI, import, library) validates through these
same models, so a value is accepted or refused the same way everywhere.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tutorials.errors import FieldError, InvalidInput

MAX_ID = 2**63 - 1
NAME_MAX = 255
URL_MAX = 2048
DESCRIPTION_MAX = 20_000
TAG_MAX = 64
TAGS_MAX = 50
PAGE_MAX = 100
QUERY_MAX = 1000


def _storable(value: str) -> str:
    """Refuse what PostgreSQL text cannot hold (NUL) and what UTF-8 cannot encode (surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _name(value: str) -> str:
    value = _storable(value).strip()
    if not value:
        raise ValueError("must not be blank")
    if len(value) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters")
    return value


def _url(value: str) -> str:
    value = _storable(value).strip()
    # isprintable() is False exactly for Unicode's Other and Separator categories, except the
    # ASCII space: the same rule as checking each character's category, 40x faster.
    if not value.isprintable() or " " in value:
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError("must be a valid http or https URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http or https URL with a host")
    return parts.scheme.lower() + value[len(parts.scheme) :]


def _tag(value: str) -> str:
    value = _storable(value).strip().lower()
    if not value:
        raise ValueError("tags must not be blank")
    if any(unicodedata.category(char)[0] == "C" or char in ",;" for char in value):
        raise ValueError("tags must not contain control characters, ',' or ';'")
    return value


def _unique_tags(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _description(value: str) -> str:
    return _storable(value)


Name = Annotated[str, Field(max_length=NAME_MAX * 4), AfterValidator(_name)]
Url = Annotated[str, Field(max_length=URL_MAX), AfterValidator(_url)]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX), AfterValidator(_description)]
Tag = Annotated[str, Field(max_length=TAG_MAX), AfterValidator(_tag)]
Tags = Annotated[list[Tag], Field(max_length=TAGS_MAX), AfterValidator(_unique_tags)]
TutorialId = Annotated[int, Field(ge=1, le=MAX_ID)]
VERSION_MAX = 2**31 - 1
Version = Annotated[int, Field(ge=1, le=VERSION_MAX)]
PageLimit = Annotated[int, Field(ge=1, le=PAGE_MAX)]


class TutorialCreate(BaseModel):
    """A new tutorial. Only `name` is required."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    name: Name
    url: Url | None = None
    description: Description | None = None
    tags: Tags = Field(default_factory=list)


class TutorialPatch(BaseModel):
    """A partial update with JSON merge patch meaning: absent = unchanged, null = cleared.

    `name` cannot be cleared (it is required); clearing `tags` leaves an empty list.
    """

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    url: Url | None = None
    description: Description | None = None
    tags: Tags | None = None

    def changes(self) -> dict[str, object]:
        """The fields the caller actually sent, with null meaning "clear"."""
        sent = self.model_dump(exclude_unset=True)
        if "name" in sent and sent["name"] is None:
            raise InvalidInput(
                "name cannot be null", [FieldError(("name",), "name cannot be null")]
            )
        if "tags" in sent and sent["tags"] is None:
            sent["tags"] = []
        return sent


class TutorialRead(BaseModel):
    """A stored tutorial, as every face shows it (the model's column names)."""

    model_config = ConfigDict(from_attributes=True)

    tutorial_id: int
    name: str
    url: str | None
    description: str | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    version: int


class TutorialPage(BaseModel):
    """One page of a keyset-paginated listing; `next_cursor` is null on the last page."""

    items: list[TutorialRead]
    next_cursor: str | None


def invalid_input(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> InvalidInput:
    """Turn pydantic's error list into one `InvalidInput` naming every bad field."""
    errors = [
        FieldError(prefix + tuple(item["loc"]), item["msg"].removeprefix("Value error, "))
        for item in error.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(
        f"{'.'.join(str(part) for part in e.loc) or 'body'}: {e.msg}" for e in errors
    )
    return InvalidInput(f"invalid input: {summary}", errors)


def check_version(version: int | None) -> int | None:
    """An expected version (optimistic concurrency) that the integer column could hold."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION_MAX:
        raise InvalidInput(
            f"expected version must be between 1 and {VERSION_MAX}",
            [FieldError(("version",), f"must be between 1 and {VERSION_MAX}")],
        )
    return version


def check_id(tutorial_id: int) -> int:
    """Refuse ids no row can have before they reach asyncpg (which overflows past bigint)."""
    if isinstance(tutorial_id, bool) or not isinstance(tutorial_id, int):
        raise InvalidInput("tutorial_id must be an integer")
    if not 1 <= tutorial_id <= MAX_ID:
        raise InvalidInput(f"tutorial_id must be between 1 and {MAX_ID}")
    return tutorial_id


def _query(value: str) -> str:
    value = _storable(value).strip()
    if not value:
        raise ValueError("must not be blank")
    return value


SearchQuery = Annotated[str, Field(max_length=QUERY_MAX), AfterValidator(_query)]
_QUERY = TypeAdapter(SearchQuery)
_TAG_FILTERS = TypeAdapter(Tags)


def check_query(query: str) -> str:
    """A full-text query we can send: not blank, not huge, storable text."""
    try:
        return _QUERY.validate_python(query)
    except ValidationError as exc:
        raise invalid_input(exc, ("q",)) from None


def check_tags(tags: Sequence[str]) -> list[str]:
    """Tag filters, normalised like stored tags (so `Python` finds `python`)."""
    try:
        return _TAG_FILTERS.validate_python(list(tags))
    except ValidationError as exc:
        raise invalid_input(exc, ("tag",)) from None
