"""The repository against a real database: one statement per write, keyset pages, search."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession

from tutorials import repository
from tutorials.db.session import Database
from tutorials.errors import InvalidInput, NotFound, StaleVersion
from tutorials.models import Tutorial
from tutorials.schemas import TutorialRead

FORGED_CURSORS = [
    "",
    "garbage",
    "WyJ4IiwxXQ",  # ["x",1]: unknown kind
    "WyJpIiwiMSJd",  # ["i","1"]: id as a string
    "WyJpIiwtMV0",  # ["i",-1]
    "WyJpIiw5OTk5OTk5OTk5OTk5OTk5OTk5OV0",  # ["i",99999999999999999999]: beyond bigint
]


async def _add(session: AsyncSession, name: str, **values: object) -> Tutorial:
    return await repository.add(session, {"name": name, **values})


async def test_add_returns_the_stored_row(session: AsyncSession, dsn: str) -> None:
    saved = await _add(session, "Async SQLAlchemy", url="https://a.io", tags=["python"])
    assert saved.tutorial_id >= 1
    assert saved.version == 1
    assert saved.created_at == saved.updated_at
    await session.commit()
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT name, url, tags, version FROM tutorials WHERE tutorial_id = $1",
            saved.tutorial_id,
        )
    finally:
        await connection.close()
    assert dict(row) == {
        "name": "Async SQLAlchemy",
        "url": "https://a.io",
        "tags": ["python"],
        "version": 1,
    }


async def test_get_and_get_by_url(session: AsyncSession) -> None:
    saved = await _add(session, "one", url="https://one.io")
    assert (await repository.get(session, saved.tutorial_id)) is saved
    found = await repository.get_by_url(session, "https://one.io")
    assert found is not None and found.tutorial_id == saved.tutorial_id
    assert await repository.get(session, saved.tutorial_id + 1000) is None
    assert await repository.get_by_url(session, "https://none.io") is None


async def test_update_bumps_version_and_checks_expected(session: AsyncSession) -> None:
    saved = await _add(session, "before")
    updated = await repository.update(
        session, saved.tutorial_id, {"name": "after"}, expected_version=1
    )
    assert (updated.name, updated.version) == ("after", 2)
    with pytest.raises(StaleVersion) as caught:
        await repository.update(session, saved.tutorial_id, {"name": "x"}, expected_version=1)
    assert caught.value.current_version == 2
    with pytest.raises(NotFound):
        await repository.update(session, saved.tutorial_id + 1000, {"name": "x"})


async def test_delete(session: AsyncSession) -> None:
    saved = await _add(session, "doomed")
    with pytest.raises(StaleVersion):
        await repository.delete(session, saved.tutorial_id, expected_version=7)
    assert await repository.delete(session, saved.tutorial_id, expected_version=1)
    assert not await repository.delete(session, saved.tutorial_id)
    assert not await repository.delete(session, saved.tutorial_id, expected_version=1)


async def test_keyset_pages_cover_everything_once(database: Database) -> None:
    async with database.session() as session:
        for index in range(25):
            await _add(session, f"t{index}", tags=["even" if index % 2 == 0 else "odd"])
    seen: list[int] = []
    cursor: str | None = None
    while True:
        async with database.session() as session:
            page = await repository.list_page(session, limit=7, cursor=cursor)
            if cursor is None:  # rows inserted after the first page must not shift pages
                await _add(session, "late arrival")
        seen += [t.tutorial_id for t in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == 26


async def test_tag_filter_uses_containment(session: AsyncSession) -> None:
    await _add(session, "a", tags=["python", "sql"])
    await _add(session, "b", tags=["python"])
    await _add(session, "c", tags=["rust"])
    both = await repository.list_page(session, tags=["python", "sql"])
    assert [t.name for t in both.items] == ["a"]
    python = await repository.list_page(session, tags=["python"])
    assert [t.name for t in python.items] == ["a", "b"]


async def test_search_ranks_name_over_description(session: AsyncSession) -> None:
    await _add(session, "Cooking pasta", description="nothing about databases")
    await _add(session, "PostgreSQL indexes", description="btree and gin")
    await _add(session, "Python basics", description="uses postgresql a little")
    await _add(session, "Unrelated")
    page = await repository.search(session, "postgresql")
    assert [t.name for t in page.items] == ["PostgreSQL indexes", "Python basics"]
    tagged = await _add(session, "Tagged one", tags=["postgresql"])
    page = await repository.search(session, "postgresql", tags=["postgresql"])
    assert [t.tutorial_id for t in page.items] == [tagged.tutorial_id]


async def test_search_pages_are_disjoint_and_ordered(session: AsyncSession) -> None:
    for index in range(12):
        await _add(session, f"async {index}", description="async " * (index % 4))
    names: list[str] = []
    cursor: str | None = None
    while True:
        page = await repository.search(session, "async", limit=5, cursor=cursor)
        names += [t.name for t in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(names) == sorted(f"async {i}" for i in range(12))
    full = await repository.search(session, "async", limit=100)
    assert names == [t.name for t in full.items]


@pytest.mark.parametrize("cursor", FORGED_CURSORS)
async def test_forged_cursors_are_invalid_input(session: AsyncSession, cursor: str) -> None:
    with pytest.raises(InvalidInput, match="invalid cursor"):
        await repository.list_page(session, cursor=cursor)


async def test_list_cursor_is_not_a_search_cursor(session: AsyncSession) -> None:
    for index in range(3):
        await _add(session, f"async {index}")
    page = await repository.list_page(session, limit=1)
    assert page.next_cursor is not None
    with pytest.raises(InvalidInput):
        await repository.search(session, "async", cursor=page.next_cursor)


@pytest.mark.parametrize("limit", [0, 101, -5])
async def test_limits_are_bounded(session: AsyncSession, limit: int) -> None:
    with pytest.raises(InvalidInput):
        await repository.list_page(session, limit=limit)


# --- The same statements on the fast path: an asyncpg connection from `Database.fast`. ---


async def test_fast_add_returns_a_detached_tutorial_the_orm_accepts(
    database: Database, dsn: str
) -> None:
    saved = await database.fast(
        lambda c: repository.add(c, {"name": "fast", "url": "https://fast.io", "tags": ["x"]})
    )
    assert isinstance(saved, Tutorial)
    assert (saved.name, saved.url, saved.tags, saved.version) == (
        "fast",
        "https://fast.io",
        ["x"],
        1,
    )
    assert saved.created_at == saved.updated_at and saved.created_at.tzinfo is not None
    state = inspect(saved)
    assert state.detached and state.key == (Tutorial, (saved.tutorial_id,), None)
    # Like an object loaded by a session that has closed: changing it and adding it to a
    # session updates the row (it is not inserted again).
    saved.name = "changed"
    async with database.session() as session:
        session.add(saved)
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT tutorial_id, name FROM tutorials")
    finally:
        await connection.close()
    assert [tuple(row) for row in rows] == [(saved.tutorial_id, "changed")]


async def test_fast_and_orm_return_the_same_rows(database: Database) -> None:
    async with database.session() as session:
        stored = await _add(session, "same", url="https://same.io", description="d", tags=["a"])
    fast = await database.fast(lambda c: repository.get(c, stored.tutorial_id))
    by_url = await database.fast(lambda c: repository.get_by_url(c, "https://same.io"))
    assert fast is not None and by_url is not None
    for found in (fast, by_url):
        assert TutorialRead.model_validate(found) == TutorialRead.model_validate(stored)
    assert await database.fast(lambda c: repository.get(c, stored.tutorial_id + 1000)) is None
    assert await database.fast(lambda c: repository.get_by_url(c, "https://none.io")) is None
    assert await database.fast(repository.count) == 1


async def test_fast_update_bumps_version_and_checks_expected(database: Database) -> None:
    saved = await database.fast(lambda c: repository.add(c, {"name": "before"}))
    updated = await database.fast(
        lambda c: repository.update(
            c, saved.tutorial_id, {"name": "after", "version": 99}, expected_version=1
        )
    )
    assert (updated.name, updated.version) == ("after", 2)
    assert updated.updated_at > saved.updated_at
    with pytest.raises(StaleVersion) as caught:
        await database.fast(
            lambda c: repository.update(c, saved.tutorial_id, {"name": "x"}, expected_version=1)
        )
    assert caught.value.current_version == 2
    with pytest.raises(NotFound):
        await database.fast(lambda c: repository.update(c, saved.tutorial_id + 1000, {}))
    unversioned = await database.fast(
        lambda c: repository.update(c, saved.tutorial_id, {"description": None, "tags": []})
    )
    assert (unversioned.name, unversioned.version, unversioned.tags) == ("after", 3, [])


async def test_fast_delete(database: Database) -> None:
    saved = await database.fast(lambda c: repository.add(c, {"name": "doomed"}))
    with pytest.raises(StaleVersion):
        await database.fast(lambda c: repository.delete(c, saved.tutorial_id, expected_version=7))
    assert await database.fast(
        lambda c: repository.delete(c, saved.tutorial_id, expected_version=1)
    )
    assert not await database.fast(lambda c: repository.delete(c, saved.tutorial_id))
    assert not await database.fast(
        lambda c: repository.delete(c, saved.tutorial_id, expected_version=1)
    )


async def test_fast_refuses_unknown_columns(database: Database) -> None:
    with pytest.raises(ValueError, match="not columns"):
        await database.fast(lambda c: repository.add(c, {"name": "x", "name; --": "y"}))


async def _pages(
    database: Database, fast: bool, limit: int, **kwargs: object
) -> list[tuple[list[int], str | None]]:
    """Every page of a listing (or a search, with `query=`), on one path or the other."""
    pages: list[tuple[list[int], str | None]] = []
    cursor: str | None = None
    query = kwargs.pop("query", None)

    async def one(executor: Any) -> repository.Page:
        if query is None:
            return await repository.list_page(executor, limit=limit, cursor=cursor, **kwargs)
        return await repository.search(executor, query, limit=limit, cursor=cursor, **kwargs)

    while True:
        if fast:
            page = await database.fast(one)
        else:
            async with database.session() as session:
                page = await one(session)
        pages.append(([t.tutorial_id for t in page.items], page.next_cursor))
        cursor = page.next_cursor
        if cursor is None:
            return pages


async def test_fast_pages_and_searches_match_the_orm_ones(database: Database) -> None:
    async with database.session() as session:
        for index in range(23):
            await _add(
                session,
                f"async {index}" if index % 3 else f"other {index}",
                description="async " * (index % 5),
                tags=["even" if index % 2 == 0 else "odd", "all"],
            )
    cases: list[dict[str, object]] = [
        {},
        {"tags": ["even"]},
        {"tags": ["even", "all"]},
        {"query": "async"},
        {"query": "async", "tags": ["odd"]},
        {"query": "nothing matches this"},
        {"query": "async", "candidates": 5},
        {"query": "async", "tags": ["odd"], "candidates": 3},
        {"query": "async", "candidates": 1000},
    ]
    for case in cases:
        for limit in (1, 4, 100):
            orm = await _pages(database, False, limit, **dict(case))
            fast = await _pages(database, True, limit, **dict(case))
            assert fast == orm, (case, limit)
    evens = await _pages(database, True, 100, tags=["even"])
    assert len(evens[0][0]) == 12


@pytest.mark.parametrize("cursor", FORGED_CURSORS)
async def test_fast_forged_cursors_are_invalid_input(database: Database, cursor: str) -> None:
    with pytest.raises(InvalidInput, match="invalid cursor"):
        await database.fast(lambda c: repository.list_page(c, cursor=cursor))
    with pytest.raises(InvalidInput, match="invalid cursor"):
        await database.fast(lambda c: repository.search(c, "x", cursor=cursor))


@pytest.mark.parametrize("limit", [0, 101, -5])
async def test_fast_limits_are_bounded(database: Database, limit: int) -> None:
    with pytest.raises(InvalidInput):
        await database.fast(lambda c: repository.list_page(c, limit=limit))


async def test_bounded_search_is_exact_below_the_bound(database: Database) -> None:
    async with database.session() as session:
        for index in range(15):
            await _add(session, f"async {index}", description="async " * (index % 4))
    exact = await _pages(database, True, 4, query="async")
    assert await _pages(database, True, 4, query="async", candidates=15) == exact
    assert await _pages(database, False, 4, query="async", candidates=100) == exact


async def test_bounded_search_ranks_only_that_many_matches(database: Database) -> None:
    async with database.session() as session:
        for index in range(30):
            await _add(session, f"async {index}", description="async " * (index % 6))
        await _add(session, "unrelated")
    rank_sql = (
        "SELECT tutorial_id, ts_rank(search, websearch_to_tsquery('english', 'async')) "
        "FROM tutorials WHERE tutorial_id = ANY($1::bigint[])"
    )
    for fast in (True, False):
        pages = await _pages(database, fast, 4, query="async", candidates=10)
        ids = [tutorial_id for items, _ in pages for tutorial_id in items]
        assert len(ids) == len(set(ids)) == 10  # disjoint pages, the bound's worth of rows
        ranks = dict(await database.fast(lambda c, ids=ids: c.fetch(rank_sql, ids)))
        ordered = [(-ranks[i], i) for i in ids]
        assert ordered == sorted(ordered)  # best first, ties by id, across the pages
    with pytest.raises(ValueError, match="candidates"):
        await database.fast(lambda c: repository.search(c, "async", candidates=-1))


async def test_bounded_search_ends_its_transaction(database: Database) -> None:
    """The bound plans each search for its words inside a short read-only transaction, which
    must be over when the call returns, whether the search succeeded or failed."""

    async def search_then_state(connection: asyncpg.Connection, query: str) -> bool:
        try:
            await repository.search(connection, query, candidates=10)
        except asyncpg.PostgresError:  # refused by the server inside the transaction
            assert query == "bad\x00query"
        return bool(connection.is_in_transaction())

    assert await database.fast(lambda c: search_then_state(c, "async")) is False
    assert await database.fast(lambda c: search_then_state(c, "bad\x00query")) is False
