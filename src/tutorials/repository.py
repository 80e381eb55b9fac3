"""Every SQL statement about tutorials, each written once, and nothing else.

The statements are plain SQL with asyncpg's `$n` parameters, run by an `Executor`:

- an asyncpg connection (the service's path: `Database.read` / `write` / `transaction`), or
- the tutorial's `AsyncSession` (`get_session()`): the same SQL goes through SQLAlchemy's
  `exec_driver_sql` on the session's connection, inside the session's transaction.

So one statement serves every path, and every path gets the same rows back as
`TutorialRecord`s; every function takes either (`executor` tells them apart). Functions never
commit (the caller's unit of work does) and make no domain decisions: a write that matched
nothing returns None, and the service asks `version_of` why.
Values arrive already validated and normalised by `tutorials.schemas`.

Pagination is by keyset, never OFFSET: a page costs the same at row 10 and row 10 million,
and rows inserted meanwhile cannot shift a page. Each query fetches one row more than asked
for, so the caller knows whether another page follows.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from itertools import starmap
from typing import TYPE_CHECKING, Any, Protocol

from tutorials.fulltext import SEARCH_CONFIG
from tutorials.schemas import TutorialRecord

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult, Row
    from sqlalchemy.ext.asyncio import AsyncSession


class Executor(Protocol):
    """What runs a statement: asyncpg's `Connection` has exactly these methods. A row and a
    value are `Any` as asyncpg types them (a `Record`, or a SQLAlchemy `Row`, read by index)."""

    async def fetch(self, query: str, *args: Any) -> Sequence[Any]: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...


class SessionExecutor:
    """An `AsyncSession` as an `Executor`: the same SQL, run by SQLAlchemy's public
    `AsyncConnection.exec_driver_sql` on the session's connection, so it joins the session's
    transaction (SQLAlchemy's asyncpg dialect takes `$n` parameters as they are)."""

    __slots__ = ("session",)

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _run(self, query: str, args: tuple[Any, ...]) -> CursorResult[Any]:
        connection = await self.session.connection()
        return await connection.exec_driver_sql(query, args or None)

    async def fetch(self, query: str, *args: Any) -> Sequence[Any]:
        return list((await self._run(query, args)).all())

    async def fetchrow(self, query: str, *args: Any) -> Row[Any] | None:
        return (await self._run(query, args)).first()

    async def fetchval(self, query: str, *args: Any) -> Any:
        row = (await self._run(query, args)).first()
        return None if row is None else row[0]

    async def execute(self, query: str, *args: Any) -> str:
        await self._run(query, args)
        return ""


def executor(target: Executor | AsyncSession) -> Executor:
    """An `Executor` for an asyncpg connection or a SQLAlchemy `AsyncSession`.

    SQLAlchemy is looked up among the modules already imported rather than imported here: a
    process that never imported it (the command line's fast path) cannot hold a session.
    """
    asyncio_extension = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_extension is not None and isinstance(target, asyncio_extension.AsyncSession):
        return SessionExecutor(target)
    return target  # type: ignore[return-value]  # an asyncpg connection (or proxy)


#: The columns every statement returns, in `TutorialRecord`'s order (`search`, the full-text
#: document, is never fetched).
FIELDS = (
    "tutorial_id",
    "name",
    "url",
    "description",
    "tags",
    "created_at",
    "updated_at",
    "version",
)
COLUMNS = ", ".join(FIELDS)
#: Columns a caller may set; `version` and `updated_at` are the statements' own business.
WRITABLE = ("name", "url", "description", "tags")

INSERT = (
    "INSERT INTO tutorials (name, url, description, tags) VALUES ($1, $2, $3, $4) "
    f"RETURNING {COLUMNS}"
)
GET = f"SELECT {COLUMNS} FROM tutorials WHERE tutorial_id = $1"
GET_BY_URL = f"SELECT {COLUMNS} FROM tutorials WHERE url = $1"
VERSION = "SELECT version FROM tutorials WHERE tutorial_id = $1"
DELETE = "DELETE FROM tutorials WHERE tutorial_id = $1 RETURNING tutorial_id"
DELETE_AT_VERSION = (
    "DELETE FROM tutorials WHERE tutorial_id = $1 AND version = $2 RETURNING tutorial_id"
)
COUNT = "SELECT count(*) FROM tutorials"
# Keyset pages: `tutorial_id > 0` is every row (ids start at 1), so one statement serves the
# first page and the next ones, and stays one prepared statement.
PAGE = f"SELECT {COLUMNS} FROM tutorials WHERE tutorial_id > $1 ORDER BY tutorial_id LIMIT $2"
PAGE_TAGGED = (
    f"SELECT {COLUMNS} FROM tutorials WHERE tutorial_id > $1 AND tags @> $3::text[] "
    "ORDER BY tutorial_id LIMIT $2"
)
#: Plan a bounded search for the words it is given, every time. PostgreSQL switches a prepared
#: statement to a generic plan after five executions, and the generic plan cannot know how
#: common the words are: it builds the index bitmap of every match where a plan for a common
#: word scans until the bound is reached, and the reverse for a rare word. Needs a transaction.
CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"
#: The same, for `Database.transaction(local=...)`.
PLAN_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def insert(
    target: Executor | AsyncSession,
    name: str,
    url: str | None,
    description: str | None,
    tags: list[str],
) -> TutorialRecord:
    """Insert one tutorial; the row as stored (id, timestamps, version 1)."""
    row = await executor(target).fetchrow(INSERT, name, url, description, tags)
    return TutorialRecord(*row)


async def get(target: Executor | AsyncSession, tutorial_id: int) -> TutorialRecord | None:
    row = await executor(target).fetchrow(GET, tutorial_id)
    return None if row is None else TutorialRecord(*row)


async def get_by_url(target: Executor | AsyncSession, url: str) -> TutorialRecord | None:
    row = await executor(target).fetchrow(GET_BY_URL, url)
    return None if row is None else TutorialRecord(*row)


async def version_of(target: Executor | AsyncSession, tutorial_id: int) -> int | None:
    """The stored version, or None when there is no such tutorial."""
    version = await executor(target).fetchval(VERSION, tutorial_id)
    return None if version is None else int(version)


@functools.cache
def update_statement(columns: tuple[str, ...], at_version: bool) -> str:
    """`UPDATE` of these columns (a subset of `WRITABLE`), bumping `version` and `updated_at`;
    with `at_version`, only while the row is still at the version given as the last argument.
    Only the columns given are written, so an update of the url leaves the search document
    alone."""
    unknown = set(columns) - set(WRITABLE)
    if unknown:
        raise ValueError(f"not writable columns of tutorials: {', '.join(sorted(unknown))}")
    sets = [f"{name} = ${index}" for index, name in enumerate(columns, start=2)]
    sets += ["version = version + 1", "updated_at = now()"]
    condition = "tutorial_id = $1"
    if at_version:
        condition += f" AND version = ${len(columns) + 2}"
    return f"UPDATE tutorials SET {', '.join(sets)} WHERE {condition} RETURNING {COLUMNS}"


async def update(
    target: Executor | AsyncSession,
    tutorial_id: int,
    changes: Mapping[str, object],
    *,
    expected_version: int | None = None,
) -> TutorialRecord | None:
    """Write `changes` (at least one column) and bump the version, in one statement; with
    `expected_version`, only if the row is still at it. None when no row matched."""
    columns = tuple(changes)
    args: list[object] = [tutorial_id, *changes.values()]
    if expected_version is not None:
        args.append(expected_version)
    statement = update_statement(columns, expected_version is not None)
    row = await executor(target).fetchrow(statement, *args)
    return None if row is None else TutorialRecord(*row)


async def delete(
    target: Executor | AsyncSession, tutorial_id: int, *, expected_version: int | None = None
) -> bool:
    """Delete a tutorial (only at `expected_version`, if given); whether a row was deleted."""
    run = executor(target)
    if expected_version is None:
        deleted = await run.fetchval(DELETE, tutorial_id)
    else:
        deleted = await run.fetchval(DELETE_AT_VERSION, tutorial_id, expected_version)
    return deleted is not None


async def page(
    target: Executor | AsyncSession, *, after_id: int, limit: int, tags: Sequence[str] = ()
) -> list[TutorialRecord]:
    """Up to `limit` tutorials after `after_id`, in id order, carrying all `tags`."""
    run = executor(target)
    if tags:
        rows = await run.fetch(PAGE_TAGGED, after_id, limit, list(tags))
    else:
        rows = await run.fetch(PAGE, after_id, limit)
    return list(starmap(TutorialRecord, rows))  # the loop in C: a microsecond a page


@functools.cache
def search_statement(tagged: bool, after: bool, bounded: bool, prefix: bool = False) -> str:
    """The ranked search: matches of `websearch_to_tsquery($1)`, best `ts_rank` first, ties by
    id, `$2` rows. Optional parts, numbered in this order: `$3` tags the rows must carry; `$4`,
    `$5` the (rank, id) the previous page ended at; `$6` (or the next free number) the bound:
    only the first that many matches the index yields are ranked; last, the prefix
    alternatives of the last word (`query_source`)."""
    args = 2
    found = ""  # conditions on matching rows (inside the bound, if any)
    if tagged:
        args += 1
        found = f" AND tags @> ${args}::text[]"
    keyset = ""  # where the previous page ended (applied to ranked rows)
    if after:
        rank, last = args + 1, args + 2
        args += 2
        keyset = (
            f" AND (ts_rank(search, query) < ${rank}::real"
            f" OR (ts_rank(search, query) = ${rank}::real AND tutorial_id > ${last}))"
        )
    prefix_arg = f"${args + (2 if bounded else 1)}::text" if prefix else None
    query = f"websearch_to_tsquery('{SEARCH_CONFIG}', $1) AS query"
    if prefix_arg is not None:  # an expression, not a function call: a subquery in FROM
        query = f"(SELECT {query_source('$1', prefix_arg)} AS query) AS typed"
    if not bounded:
        return (
            f"SELECT {COLUMNS}, ts_rank(search, query) AS rank FROM tutorials, {query} "
            f"WHERE search @@ query{found}{keyset} ORDER BY rank DESC, tutorial_id LIMIT $2"
        )
    # The inner LIMIT stops the index scan once the bound is reached.
    return (
        f"SELECT {COLUMNS}, ts_rank(search, query) AS rank FROM ("
        f"SELECT tutorials.*, query FROM tutorials, {query} "
        f"WHERE search @@ query{found} LIMIT ${args + 1}) AS tutorials "
        f"WHERE true{keyset} ORDER BY rank DESC, tutorial_id LIMIT $2"
    )


async def search(
    target: Executor | AsyncSession,
    query: str,
    *,
    limit: int,
    tags: Sequence[str] = (),
    after: tuple[float, int] | None = None,
    candidates: int = 0,
    plan: bool = True,
    prefix: str | None = None,
) -> list[tuple[TutorialRecord, float]]:
    """Full-text search (web search syntax), best match first, with each row's rank.

    `candidates` bounds the work (0: rank every match): only the first that many matches are
    ranked. Ranking needs every ranked row's document, one heap visit per match: fine for a
    few thousand, a second for a word in a quarter of a million rows. With the bound, a query
    matching fewer rows is ranked exactly; one matching more gets the best among the first
    `candidates` found (the same ones from page to page while the table does not change). A
    bounded search must run inside a transaction, planned for its words (`CUSTOM_PLAN`, a
    `SET LOCAL`): sent here, unless `plan` is False because the caller's transaction began
    with it (`Database.transaction(local=PLAN_SETTINGS)`, one round trip less). `prefix`: the
    last word's prefix alternatives (`query_source`), for search as you type.
    """
    run = executor(target)
    args: list[object] = [query, limit]
    if tags:
        args.append(list(tags))
    if after is not None:
        args += after
    if candidates:
        args.append(candidates)
        if plan:
            await run.execute(CUSTOM_PLAN)
    if prefix is not None:
        args.append(prefix)
    statement = search_statement(
        bool(tags), after is not None, bool(candidates), prefix is not None
    )
    rows = await run.fetch(statement, *args)
    # Slices of an asyncpg Record (or a SQLAlchemy Row) are tuples: the columns, then the rank.
    return [(TutorialRecord(*row[:-1]), float(row[-1])) for row in rows]


async def count(target: Executor | AsyncSession) -> int:
    return int(await executor(target).fetchval(COUNT))


# --- Browsing: other orders, prefix search, counts, tags ------------------------------------

#: The name order's key: the first 64 characters of the lower-cased name. Bounded, so a page's
#: cursor can carry it (cursors are at most 512 characters); names that share those 64
#: characters come in id order.
NAME_KEY = "left(lower(name), 64)"
NAME_KEY_CHARS = 64
#: order -> (the sort key, the direction). `oldest` is `page`'s: id order, ascending.
_ORDERS = {
    "newest": ("tutorial_id", "DESC"),
    "name": (NAME_KEY, "ASC"),
    "updated": ("updated_at", "DESC"),
}


@functools.cache
def ordered_page_statement(order: str, tagged: bool, after: bool) -> str:
    """A keyset page in another order than id's, each row with its sort key last: `$1` rows,
    `$2` the tags they must carry (if `tagged`), then where the previous page ended (if
    `after`): its last id (`newest`), or its last key and id (`name`, `updated`).
    Ties on the key are broken by id, in the key's direction."""
    key, direction = _ORDERS[order]
    conditions = []
    args = 1
    if tagged:
        args += 1
        conditions.append(f"tags @> ${args}::text[]")
    if after:
        comparison = ">" if direction == "ASC" else "<"
        if order == "newest":
            conditions.append(f"tutorial_id < ${args + 1}")
        else:
            conditions.append(f"({key}, tutorial_id) {comparison} (${args + 1}, ${args + 2})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    ordering = (
        "tutorial_id DESC" if order == "newest" else f"{key} {direction}, tutorial_id {direction}"
    )
    return f"SELECT {COLUMNS}, {key} FROM tutorials{where} ORDER BY {ordering} LIMIT $1"


async def ordered_page(
    target: Executor | AsyncSession,
    *,
    order: str,
    limit: int,
    tags: Sequence[str] = (),
    after: tuple[Any, ...] | None = None,
) -> list[tuple[TutorialRecord, Any]]:
    """Up to `limit` tutorials carrying all `tags`, in `order` (`newest`, `name`, `updated`),
    after `after` (the previous page's last id, or its last key and id); each with its key."""
    args: list[object] = [limit]
    if tags:
        args.append(list(tags))
    if after is not None:
        args += after
    statement = ordered_page_statement(order, bool(tags), after is not None)
    rows = await executor(target).fetch(statement, *args)
    return [(TutorialRecord(*row[:-1]), row[-1]) for row in rows]


def query_source(text: str, prefix: str | None) -> str:
    """The tsquery of a search whose text is the parameter `text` (`$1`): web search syntax,
    and with `prefix` (the parameter holding `to_tsquery` alternatives such as
    `'sqlalch':*`), the last word as the beginning of a word. The alternatives are read both
    stemmed (the document's config) and as typed (`simple`: stop words kept), either may match."""
    query = f"websearch_to_tsquery('{SEARCH_CONFIG}', {text})"
    if prefix is None:
        return query
    return (
        f"({query} && (to_tsquery('{SEARCH_CONFIG}', {prefix}) || to_tsquery('simple', {prefix})))"
    )


TAG_COUNTS = (
    "SELECT tag, count(*) FROM tutorials, unnest(tags) AS tag "
    "GROUP BY tag ORDER BY count(*) DESC, tag LIMIT $1"
)


async def tag_counts(target: Executor | AsyncSession, *, limit: int) -> list[tuple[str, int]]:
    """The `limit` most used tags, with how many tutorials carry each: most used first."""
    rows = await executor(target).fetch(TAG_COUNTS, limit)
    return [(str(row[0]), int(row[1])) for row in rows]


@functools.cache
def count_statement(tagged: bool, searched: bool, prefix: bool, bounded: bool) -> str:
    """How many tutorials a listing or a search holds. Parameters in order: the tags (if
    `tagged`), the search text and its prefix alternatives (if `searched`, `prefix`), the
    bound (if `bounded`): a search counts at most that many matches (what it ranks)."""
    args: list[str] = []
    conditions: list[str] = []
    if tagged:
        args.append("tags")
        conditions.append(f"tags @> ${len(args)}::text[]")
    if searched:
        args.append("text")
        text = f"${len(args)}::text"
        prefix_arg = None
        if prefix:
            args.append("prefix")
            prefix_arg = f"${len(args)}::text"
        conditions.append(f"search @@ {query_source(text, prefix_arg)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    if not bounded:
        return f"SELECT count(*) FROM tutorials{where}"
    args.append("bound")
    return f"SELECT count(*) FROM (SELECT FROM tutorials{where} LIMIT ${len(args)}) AS found"


async def count_found(
    target: Executor | AsyncSession,
    *,
    tags: Sequence[str] = (),
    query: str | None = None,
    prefix: str | None = None,
    bound: int = 0,
) -> int:
    """How many tutorials carry all `tags` and match `query` (with its `prefix` alternatives),
    counting at most `bound` of them when given (0: all)."""
    args: list[object] = []
    if tags:
        args.append(list(tags))
    if query is not None:
        args.append(query)
        if prefix is not None:
            args.append(prefix)
    if bound:
        args.append(bound)
    statement = count_statement(bool(tags), query is not None, prefix is not None, bool(bound))
    return int(await executor(target).fetchval(statement, *args))


@functools.cache
def matching_statement(delete: bool, tagged: bool, searched: bool) -> str:
    """Count (or delete) the tutorials carrying every tag of `$1` and matching the full-text
    query (web search syntax) `$2` (`$1` when untagged); with neither, every tutorial.

    The filter of a filtered export (`transfer.sql`): what `tutorials export --tag T --q Q`
    writes is what `tutorials delete --tag T --q Q` deletes. A delete counts its rows in a CTE
    rather than from the command status, so it reads the same through an `AsyncSession`.
    """
    conditions: list[str] = []
    if tagged:
        conditions.append(f"tags @> ${len(conditions) + 1}::text[]")
    if searched:
        conditions.append(
            f"search @@ websearch_to_tsquery('{SEARCH_CONFIG}', ${len(conditions) + 1}::text)"
        )
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    if not delete:
        return f"SELECT count(*) FROM tutorials{where}"
    return (
        f"WITH deleted AS (DELETE FROM tutorials{where} RETURNING 1) SELECT count(*) FROM deleted"
    )


async def count_matching(
    target: Executor | AsyncSession, *, tags: Sequence[str] = (), query: str | None = None
) -> int:
    """How many tutorials carry all `tags` and match `query` (None: no search)."""
    return await _matching(target, False, tags, query)


async def delete_matching(
    target: Executor | AsyncSession, *, tags: Sequence[str] = (), query: str | None = None
) -> int:
    """Delete the tutorials `count_matching` counts, in one statement; how many were deleted."""
    return await _matching(target, True, tags, query)


async def _matching(
    target: Executor | AsyncSession, delete: bool, tags: Sequence[str], query: str | None
) -> int:
    args: list[object] = []
    if tags:
        args.append(list(tags))
    if query is not None:
        args.append(query)
    statement = matching_statement(delete, bool(tags), query is not None)
    return int(await executor(target).fetchval(statement, *args))
