"""Every SQL statement about tutorials, and nothing else.

Functions take the caller's `AsyncSession` and never commit: the unit of work around them
(`Database.session()` / `get_session()`) decides. Inputs arrive already validated by
`tutorials.schemas`. Each write is a single statement with RETURNING, so it costs one round
trip and hands back the row as the database stored it (ids, timestamps, version).

Pagination is by keyset, never OFFSET: a page costs the same at row 10 and row 10 million, and
rows inserted meanwhile cannot shift a page. Cursors are opaque to callers (base64 of a small
JSON document) and strictly checked, so a forged one is a clear `InvalidInput`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy import delete as delete_statement
from sqlalchemy import insert as insert_statement
from sqlalchemy import update as update_statement
from sqlalchemy.dialects.postgresql import REAL
from sqlalchemy.ext.asyncio import AsyncSession

from tutorials.errors import InvalidInput, NotFound, StaleVersion
from tutorials.models import SEARCH_CONFIG, Tutorial
from tutorials.schemas import MAX_ID, PAGE_MAX

DEFAULT_PAGE = 20


@dataclass(frozen=True)
class Page:
    """One page of tutorials and the cursor of the next one (None on the last page)."""

    items: list[Tutorial]
    next_cursor: str | None


async def add(session: AsyncSession, values: Mapping[str, Any]) -> Tutorial:
    """Insert one tutorial; returns it as stored."""
    statement = insert_statement(Tutorial).values(dict(values)).returning(Tutorial)
    return (await session.scalars(statement)).one()


async def get(session: AsyncSession, tutorial_id: int) -> Tutorial | None:
    return await session.get(Tutorial, tutorial_id)


async def get_by_url(session: AsyncSession, url: str) -> Tutorial | None:
    return (await session.scalars(select(Tutorial).where(Tutorial.url == url))).one_or_none()


async def update(
    session: AsyncSession,
    tutorial_id: int,
    changes: Mapping[str, Any],
    *,
    expected_version: int | None = None,
) -> Tutorial:
    """Apply `changes` and bump `version`; with `expected_version`, only if it still matches.

    Raises `NotFound` when there is no such tutorial and `StaleVersion` when it changed since
    the caller read `expected_version`. The check and the write are one statement, so two
    writers holding the same version cannot both succeed.
    """
    condition = Tutorial.tutorial_id == tutorial_id
    if expected_version is not None:
        condition = and_(condition, Tutorial.version == expected_version)
    statement = (
        update_statement(Tutorial)
        .where(condition)
        .values({**changes, "version": Tutorial.version + 1, "updated_at": func.now()})
        .returning(Tutorial)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    updated = (await session.scalars(statement)).one_or_none()
    if updated is None:
        await _raise_missing_or_stale(session, tutorial_id, expected_version)
    assert updated is not None
    return updated


async def delete(
    session: AsyncSession, tutorial_id: int, *, expected_version: int | None = None
) -> bool:
    """Delete a tutorial; False when there was none. `StaleVersion` if the version moved on."""
    condition = Tutorial.tutorial_id == tutorial_id
    if expected_version is not None:
        condition = and_(condition, Tutorial.version == expected_version)
    statement = (
        delete_statement(Tutorial)
        .where(condition)
        .returning(Tutorial.tutorial_id)
        .execution_options(synchronize_session=False)
    )
    deleted = (await session.execute(statement)).scalar_one_or_none()
    if deleted is None and expected_version is not None:
        current = await _current_version(session, tutorial_id)
        if current is not None:
            raise StaleVersion(
                f"tutorial {tutorial_id} is at version {current}, not {expected_version}",
                current,
            )
    return deleted is not None


async def list_page(
    session: AsyncSession,
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
) -> Page:
    """Tutorials in id order (oldest first), filtered to those carrying all `tags`."""
    limit = _check_limit(limit)
    statement = _filtered(select(Tutorial), tags).order_by(Tutorial.tutorial_id).limit(limit + 1)
    if cursor is not None:
        (after,) = _decode_cursor(cursor, "i", (int,))
        statement = statement.where(Tutorial.tutorial_id > _check_cursor_id(after))
    rows = list((await session.scalars(statement)).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor("i", [rows[-1].tutorial_id])
    return Page(rows, next_cursor)


async def search(
    session: AsyncSession,
    query: str,
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
) -> Page:
    """Full-text search (web search syntax: words, "phrases", -not, or), best match first.

    Ranked by `ts_rank` over the weighted document (name > description > tags), ties broken
    by id, and paginated by keyset on (rank, id).
    """
    limit = _check_limit(limit)
    tsquery = func.websearch_to_tsquery(SEARCH_CONFIG, query)
    rank = func.ts_rank(Tutorial.search, tsquery).label("rank")
    statement = (
        _filtered(select(Tutorial, rank), tags)
        .where(Tutorial.search.bool_op("@@")(tsquery))
        .order_by(rank.desc(), Tutorial.tutorial_id)
        .limit(limit + 1)
    )
    if cursor is not None:
        last_rank, last_id = _decode_cursor(cursor, "r", (float, int))
        bound = func.cast(last_rank, REAL)
        statement = statement.where(
            or_(
                func.ts_rank(Tutorial.search, tsquery) < bound,
                and_(
                    func.ts_rank(Tutorial.search, tsquery) == bound,
                    Tutorial.tutorial_id > _check_cursor_id(last_id),
                ),
            )
        )
    rows = list((await session.execute(statement)).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last, last_rank_value = rows[-1]
        next_cursor = _encode_cursor("r", [float(last_rank_value), last.tutorial_id])
    return Page([tutorial for tutorial, _ in rows], next_cursor)


async def count(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(Tutorial))).scalar_one()


def _filtered(statement: Select[Any], tags: Sequence[str]) -> Select[Any]:
    if tags:
        # `@>` (contains) is what the GIN index on tags serves.
        statement = statement.where(Tutorial.tags.contains(list(tags)))
    return statement


async def _current_version(session: AsyncSession, tutorial_id: int) -> int | None:
    statement = select(Tutorial.version).where(Tutorial.tutorial_id == tutorial_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def _raise_missing_or_stale(
    session: AsyncSession, tutorial_id: int, expected_version: int | None
) -> None:
    current = await _current_version(session, tutorial_id)
    if current is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    raise StaleVersion(
        f"tutorial {tutorial_id} is at version {current}, not {expected_version}", current
    )


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= PAGE_MAX:
        raise InvalidInput(f"limit must be between 1 and {PAGE_MAX}")
    return limit


def _check_cursor_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise InvalidInput("invalid cursor")
    return value


def _encode_cursor(kind: str, values: list[Any]) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> list[Any]:
    """Decode a cursor made by `_encode_cursor(kind, ...)`; anything else is `InvalidInput`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidInput("invalid cursor") from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != len(types) + 1
        or decoded[0] != kind
        or not all(
            isinstance(value, expected) and not isinstance(value, bool)
            for value, expected in zip(decoded[1:], types, strict=True)
        )
    ):
        raise InvalidInput("invalid cursor")
    return decoded[1:]
