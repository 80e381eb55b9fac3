"""Every SQL statement about tutorials, and nothing else.

Functions take what the unit of work around them hands out, and never commit:

- an `AsyncSession` (`Database.session()` / `Database.run()` / `get_session()`): the ORM, one
  transaction that the unit of work commits;
- an asyncpg `Connection` (`Database.fast()`): the same statements sent by asyncpg directly, in
  autocommit, each its own transaction. This is the hot path: one round trip, prepared
  statements cached per connection, and rows mapped to `Tutorial` objects without the ORM's
  unit of work (they come back detached, exactly like the ORM path's after its session closed).

Both give the same results, errors and objects; tests/test_repository.py runs each case on
both. Inputs arrive already validated by `tutorials.schemas`. Each write is a single statement
with RETURNING, so it costs one round trip and hands back the row as the database stored it
(ids, timestamps, version); the reads that tell "not found" from "stale" run only on failure.

Pagination is by keyset, never OFFSET: a page costs the same at row 10 and row 10 million, and
rows inserted meanwhile cannot shift a page. Cursors are opaque to callers (base64 of a small
JSON document) and strictly checked, so a forged one is a clear `InvalidInput`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from sqlalchemy import Select, and_, func, inspect, or_, select, text
from sqlalchemy import delete as delete_statement
from sqlalchemy import insert as insert_statement
from sqlalchemy import update as update_statement
from sqlalchemy.dialects.postgresql import REAL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, configure_mappers
from sqlalchemy.orm.base import instance_state

from tutorials.errors import InvalidInput, NotFound, StaleVersion
from tutorials.models import SEARCH_CONFIG, Tutorial
from tutorials.schemas import MAX_ID, PAGE_MAX

#: The connection `Database.fast` hands to its work: asyncpg's, with plain `Record` rows.
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]
else:
    Connection = asyncpg.Connection

#: What the repository's functions accept: an ORM session or a `Database.fast` connection.
Executor: TypeAlias = "AsyncSession | Connection"

DEFAULT_PAGE = 20


@dataclass(frozen=True)
class Page:
    """One page of tutorials and the cursor of the next one (None on the last page)."""

    items: list[Tutorial]
    next_cursor: str | None


async def add(session: Executor, values: Mapping[str, Any]) -> Tutorial:
    """Insert one tutorial; returns it as stored."""
    if not isinstance(session, AsyncSession):
        names = _columns(values)
        row = await session.fetchrow(_insert_sql(names), *(values[name] for name in names))
        assert row is not None
        return _tutorial(row)
    statement = insert_statement(Tutorial).values(dict(values)).returning(Tutorial)
    return (await session.scalars(statement)).one()


async def get(session: Executor, tutorial_id: int) -> Tutorial | None:
    if not isinstance(session, AsyncSession):
        row = await session.fetchrow(_GET_SQL, tutorial_id)
        return None if row is None else _tutorial(row)
    return await session.get(Tutorial, tutorial_id)


async def get_by_url(session: Executor, url: str) -> Tutorial | None:
    if not isinstance(session, AsyncSession):
        row = await session.fetchrow(_GET_BY_URL_SQL, url)
        return None if row is None else _tutorial(row)
    return (await session.scalars(select(Tutorial).where(Tutorial.url == url))).one_or_none()


async def update(
    session: Executor,
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
    if not isinstance(session, AsyncSession):
        names = _columns(changes, _SERVER_MANAGED)
        sql = _update_sql(names, expected_version is not None)
        args: list[Any] = [tutorial_id, *(changes[name] for name in names)]
        if expected_version is not None:
            args.append(expected_version)
        row = await session.fetchrow(sql, *args)
        if row is None:
            await _raise_missing_or_stale(session, tutorial_id, expected_version)
        assert row is not None
        return _tutorial(row)
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
    session: Executor, tutorial_id: int, *, expected_version: int | None = None
) -> bool:
    """Delete a tutorial; False when there was none. `StaleVersion` if the version moved on."""
    deleted: int | None
    if not isinstance(session, AsyncSession):
        if expected_version is None:
            deleted = await session.fetchval(_DELETE_SQL, tutorial_id)
        else:
            deleted = await session.fetchval(_DELETE_VERSION_SQL, tutorial_id, expected_version)
    else:
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
    session: Executor,
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
) -> Page:
    """Tutorials in id order (oldest first), filtered to those carrying all `tags`."""
    limit = _check_limit(limit)
    if not isinstance(session, AsyncSession):
        after = 0
        if cursor is not None:
            (after,) = _decode_cursor(cursor, "i", (int,))
            after = _check_cursor_id(after)
        if tags:
            records = await session.fetch(_PAGE_TAGS_SQL, after, limit + 1, list(tags))
        else:
            records = await session.fetch(_PAGE_SQL, after, limit + 1)
        # Objects only for the rows returned: the extra one only says whether a page follows.
        items = [_tutorial(row) for row in records[:limit]]
        if len(records) > limit:
            return Page(items, _encode_cursor("i", [items[-1].tutorial_id]))
        return Page(items, None)
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
    session: Executor,
    query: str,
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
    candidates: int | None = None,
) -> Page:
    """Full-text search (web search syntax: words, "phrases", -not, or), best match first.

    Ranked by `ts_rank` over the weighted document (name > description > tags), ties broken
    by id, and paginated by keyset on (rank, id).

    `candidates` bounds the work: only the first that many matching rows the index yields are
    ranked (None or 0: all of them). Ranking needs every ranked row's document, so an exact
    ranking costs one heap visit per match: fine for a few thousand, a second for a word in a
    quarter of a million rows. With the bound, a query matching fewer rows is ranked exactly;
    one matching more gets the best matches among the first `candidates` found (the same
    ones from page to page while the table does not change, so pages stay disjoint).
    """
    limit = _check_limit(limit)
    if candidates is not None and candidates < 0:
        raise ValueError("candidates must be positive (or 0 / None for no bound)")
    if not isinstance(session, AsyncSession):
        return await _search_direct(session, query, limit, cursor, tags, candidates or 0)
    tsquery = func.websearch_to_tsquery(SEARCH_CONFIG, query)
    found = _filtered(select(Tutorial), tags).where(Tutorial.search.bool_op("@@")(tsquery))
    ranked = aliased(Tutorial, found.limit(candidates).subquery()) if candidates else Tutorial
    if candidates:
        await session.execute(text(_CUSTOM_PLAN_SETTING))  # in the session's transaction
    rank = func.ts_rank(ranked.search, tsquery).label("rank")
    statement = select(ranked, rank).order_by(rank.desc(), ranked.tutorial_id).limit(limit + 1)
    if not candidates:
        statement = _filtered(statement, tags).where(ranked.search.bool_op("@@")(tsquery))
    if cursor is not None:
        last_rank, last_id = _decode_cursor(cursor, "r", (float, int))
        bound = func.cast(last_rank, REAL)
        statement = statement.where(
            or_(
                func.ts_rank(ranked.search, tsquery) < bound,
                and_(
                    func.ts_rank(ranked.search, tsquery) == bound,
                    ranked.tutorial_id > _check_cursor_id(last_id),
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


async def count(session: Executor) -> int:
    if not isinstance(session, AsyncSession):
        return int(await session.fetchval("SELECT count(*) FROM tutorials"))
    return (await session.execute(select(func.count()).select_from(Tutorial))).scalar_one()


def _filtered(statement: Select[Any], tags: Sequence[str]) -> Select[Any]:
    if tags:
        # `@>` (contains) is what the GIN index on tags serves.
        statement = statement.where(Tutorial.tags.contains(list(tags)))
    return statement


async def _current_version(session: Executor, tutorial_id: int) -> int | None:
    if not isinstance(session, AsyncSession):
        version = await session.fetchval(_VERSION_SQL, tutorial_id)
        return None if version is None else int(version)
    statement = select(Tutorial.version).where(Tutorial.tutorial_id == tutorial_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def _raise_missing_or_stale(
    session: Executor, tutorial_id: int, expected_version: int | None
) -> None:
    current = await _current_version(session, tutorial_id)
    if current is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    raise StaleVersion(
        f"tutorial {tutorial_id} is at version {current}, not {expected_version}", current
    )


# --- The asyncpg side: the same statements as plain SQL, and rows mapped to `Tutorial`. ---

#: Columns every statement returns, in `Tutorial`'s attribute names (the deferred `search`
#: document is never fetched, as on the ORM side).
_FIELDS = (
    "tutorial_id",
    "name",
    "url",
    "description",
    "tags",
    "created_at",
    "updated_at",
    "version",
)
_RETURNING = ", ".join(_FIELDS)
#: Columns a caller may set (as the ORM path's `insert().values()` accepts them).
_WRITABLE = frozenset(_FIELDS)
#: Set by `update` itself, whatever `changes` says (as on the ORM side).
_SERVER_MANAGED = frozenset({"version", "updated_at"})

_GET_SQL = f"SELECT {_RETURNING} FROM tutorials WHERE tutorial_id = $1"
_GET_BY_URL_SQL = f"SELECT {_RETURNING} FROM tutorials WHERE url = $1"
_VERSION_SQL = "SELECT version FROM tutorials WHERE tutorial_id = $1"
_DELETE_SQL = "DELETE FROM tutorials WHERE tutorial_id = $1 RETURNING tutorial_id"
_DELETE_VERSION_SQL = (
    "DELETE FROM tutorials WHERE tutorial_id = $1 AND version = $2 RETURNING tutorial_id"
)
# Keyset pages: `tutorial_id > 0` is every row (ids start at 1), so one statement serves the
# first page and the next ones, and stays one prepared statement.
_PAGE_SQL = (
    f"SELECT {_RETURNING} FROM tutorials WHERE tutorial_id > $1 ORDER BY tutorial_id LIMIT $2"
)
_PAGE_TAGS_SQL = (
    f"SELECT {_RETURNING} FROM tutorials WHERE tutorial_id > $1 AND tags @> $3::text[] "
    "ORDER BY tutorial_id LIMIT $2"
)
_SEARCH_SQL = (
    f"SELECT {_RETURNING}, ts_rank(search, query) AS rank "
    f"FROM tutorials, websearch_to_tsquery('{SEARCH_CONFIG}', $1) AS query "
    "WHERE search @@ query{filters} ORDER BY rank DESC, tutorial_id LIMIT $2"
)
#: The same ranking over at most $bound matches: the inner LIMIT stops the scan early.
_SEARCH_BOUNDED_SQL = (
    f"SELECT {_RETURNING}, ts_rank(search, query) AS rank FROM ("
    f"SELECT tutorials.*, query FROM tutorials, websearch_to_tsquery('{SEARCH_CONFIG}', $1) "
    "AS query WHERE search @@ query{found} LIMIT ${bound}) AS tutorials "
    "WHERE true{after} ORDER BY rank DESC, tutorial_id LIMIT $2"
)
_SEARCH_TAGS = " AND tags @> ${t}::text[]"
#: Plan the bounded search for the words it is given, every time (one round trip, before it).
#: PostgreSQL switches a prepared statement to a generic plan after five executions, and the
#: generic plan cannot know how common the words are: it builds the index bitmap of every
#: match (100 ms for a word in 277,000 of 1,000,000 rows) where a plan for that word scans
#: until the bound is reached (7 ms), and the reverse for a rare word.
_CUSTOM_PLAN_SETTING = "SET LOCAL plan_cache_mode = force_custom_plan"
_CUSTOM_PLAN = "BEGIN READ ONLY; " + _CUSTOM_PLAN_SETTING  # the fast path opens its transaction
_SEARCH_AFTER = (
    " AND (ts_rank(search, query) < ${r}::real"
    " OR (ts_rank(search, query) = ${r}::real AND tutorial_id > ${i}))"
)
_insert_cache: dict[tuple[str, ...], str] = {}
_update_cache: dict[tuple[tuple[str, ...], bool], str] = {}
_new_tutorial: Callable[[], Tutorial] | None = None


def _instance_factory() -> Callable[[], Tutorial]:
    """`Tutorial`'s bare constructor, once the mappers are configured (attribute access on an
    instance made before that would fail), so the first fast call configures them."""
    global _new_tutorial
    configure_mappers()
    _new_tutorial = inspect(Tutorial).class_manager.new_instance
    return _new_tutorial


def _columns(values: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The column names of `values`, checked against the table's (they become SQL text)."""
    names = tuple(name for name in values if name not in skip)
    unknown = [name for name in names if name not in _WRITABLE]
    if unknown:
        raise ValueError(f"not columns of tutorials: {', '.join(sorted(unknown))}")
    return names


def _insert_sql(names: tuple[str, ...]) -> str:
    sql = _insert_cache.get(names)
    if sql is None:
        placeholders = ", ".join(f"${index}" for index in range(1, len(names) + 1))
        columns = ", ".join(names)
        sql = (
            f"INSERT INTO tutorials ({columns}) VALUES ({placeholders}) RETURNING {_RETURNING}"
            if names
            else f"INSERT INTO tutorials DEFAULT VALUES RETURNING {_RETURNING}"
        )
        _insert_cache[names] = sql
    return sql


def _update_sql(names: tuple[str, ...], check_version: bool) -> str:
    key = (names, check_version)
    sql = _update_cache.get(key)
    if sql is None:
        sets = [f"{name} = ${index}" for index, name in enumerate(names, start=2)]
        sets += ["version = version + 1", "updated_at = now()"]
        condition = "tutorial_id = $1"
        if check_version:
            condition += f" AND version = ${len(names) + 2}"
        sql = f"UPDATE tutorials SET {', '.join(sets)} WHERE {condition} RETURNING {_RETURNING}"
        _update_cache[key] = sql
    return sql


def _tutorial(row: asyncpg.Record) -> Tutorial:
    """A `Tutorial` from a row of `_FIELDS`, in the state the ORM leaves a loaded object in
    once its session has closed (detached, with its identity key, nothing modified): about
    1 µs instead of the ORM's load or `Tutorial(**row)`'s instrumented constructor."""
    tutorial = (_new_tutorial or _instance_factory())()
    # No `strict=`: zip() called with a keyword takes CPython 3.11's slow call path, ≈ 0.2 µs
    # per object, a fifth of building it (the row has at least all of _FIELDS, by its SQL).
    tutorial.__dict__.update(zip(_FIELDS, row))  # noqa: B905
    instance_state(tutorial).key = (Tutorial, (row[0],), None)
    return tutorial


async def _search_direct(
    connection: Connection,
    query: str,
    limit: int,
    cursor: str | None,
    tags: Sequence[str],
    candidates: int,
) -> Page:
    args: list[Any] = [query, limit + 1]
    found = ""  # conditions on the matching rows (inside the bound, if any)
    if tags:
        args.append(list(tags))
        found += _SEARCH_TAGS.format(t=len(args))
    after = ""  # the keyset condition (applied to the ranked rows)
    if cursor is not None:
        last_rank, last_id = _decode_cursor(cursor, "r", (float, int))
        args += [last_rank, _check_cursor_id(last_id)]
        after = _SEARCH_AFTER.format(r=len(args) - 1, i=len(args))
    if candidates:
        args.append(candidates)
        sql = _SEARCH_BOUNDED_SQL.format(found=found, after=after, bound=len(args))
        await connection.execute(_CUSTOM_PLAN)
        try:
            records = await connection.fetch(sql, *args)
        finally:
            # Also after a failure: COMMIT then rolls back and ends the transaction. (If this
            # never runs, e.g. on cancellation, `Database.fast` discards the connection.)
            await connection.execute("COMMIT")
    else:
        records = await connection.fetch(_SEARCH_SQL.format(filters=found + after), *args)
    items = [_tutorial(row) for row in records[:limit]]
    next_cursor = None
    if len(records) > limit:
        next_cursor = _encode_cursor(
            "r", [float(records[limit - 1]["rank"]), items[-1].tutorial_id]
        )
    return Page(items, next_cursor)


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= PAGE_MAX:
        raise InvalidInput(f"limit must be between 1 and {PAGE_MAX}")
    return limit


def _check_cursor_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise InvalidInput("invalid cursor")
    return value


#: One encoder for every cursor: `json.dumps(..., separators=...)` builds a new one per call.
_CURSOR_JSON = json.JSONEncoder(separators=(",", ":"))


def _encode_cursor(kind: str, values: list[Any]) -> str:
    raw = _CURSOR_JSON.encode([kind, *values]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> list[Any]:
    """Decode a cursor made by `_encode_cursor(kind, ...)`; anything else is `InvalidInput`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw.decode())  # from str: half the cost of sniffing bytes
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
