"""The statement set against a real database, run by both executors: an asyncpg connection
(the service's path) and the tutorial's `AsyncSession` (the same SQL through SQLAlchemy's
`exec_driver_sql`). Every test runs on both, so the two paths cannot drift apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tutorials import repository
from tutorials.db.database import Database
from tutorials.schemas import TutorialRecord

Executor = Any  # an asyncpg connection or an AsyncSession: what the repository accepts


@pytest.fixture(params=["asyncpg", "session"])
async def ex(request: pytest.FixtureRequest, database: Database, dsn: str) -> AsyncIterator[Any]:
    """One open transaction on this test's database, through either path; rolled back."""
    if request.param == "asyncpg":
        connection = await asyncpg.connect(dsn)
        transaction = connection.transaction()
        await transaction.start()
        try:
            yield connection
        finally:
            await transaction.rollback()
            await connection.close()
    else:
        async with database.engine.connect() as connection:
            session = AsyncSession(bind=connection)
            try:
                yield session
            finally:
                await session.close()
                await connection.rollback()


async def _add(ex: Executor, name: str, url: str | None = None, **values: Any) -> TutorialRecord:
    return await repository.insert(ex, name, url, values.get("description"), values.get("tags", []))


async def test_executor_tells_sessions_from_connections(ex: Executor) -> None:
    chosen = repository.executor(ex)
    if isinstance(ex, AsyncSession):
        assert isinstance(chosen, repository.SessionExecutor)
    else:
        assert chosen is ex


async def test_insert_returns_the_stored_row(ex: Executor) -> None:
    saved = await _add(ex, "Async SQLAlchemy", "https://a.io/", tags=["python"])
    assert isinstance(saved, TutorialRecord)
    assert saved.tutorial_id >= 1
    assert (saved.name, saved.url, saved.description, saved.tags) == (
        "Async SQLAlchemy",
        "https://a.io/",
        None,
        ["python"],
    )
    assert saved.version == 1
    assert saved.created_at == saved.updated_at
    assert saved.created_at.tzinfo is not None


async def test_get_get_by_url_and_version_of(ex: Executor) -> None:
    saved = await _add(ex, "one", "https://one.io/")
    assert await repository.get(ex, saved.tutorial_id) == saved
    assert await repository.get_by_url(ex, "https://one.io/") == saved
    assert await repository.version_of(ex, saved.tutorial_id) == 1
    assert await repository.get(ex, saved.tutorial_id + 1000) is None
    assert await repository.get_by_url(ex, "https://none.io/") is None
    assert await repository.version_of(ex, saved.tutorial_id + 1000) is None


async def test_update_writes_only_the_given_columns_and_bumps_the_version(ex: Executor) -> None:
    saved = await _add(ex, "one", "https://one.io/", description="keep", tags=["a"])
    updated = await repository.update(ex, saved.tutorial_id, {"name": "uno"})
    assert updated is not None
    assert (updated.name, updated.url, updated.description, updated.tags) == (
        "uno",
        "https://one.io/",
        "keep",
        ["a"],
    )
    assert updated.version == 2
    cleared = await repository.update(ex, saved.tutorial_id, {"url": None, "tags": []})
    assert cleared is not None
    assert (cleared.url, cleared.tags, cleared.version) == (None, [], 3)


async def test_update_at_a_version_matches_only_that_version(ex: Executor) -> None:
    saved = await _add(ex, "one")
    stale = await repository.update(ex, saved.tutorial_id, {"name": "x"}, expected_version=7)
    assert stale is None
    assert (await repository.get(ex, saved.tutorial_id)) == saved  # nothing written
    fresh = await repository.update(ex, saved.tutorial_id, {"name": "x"}, expected_version=1)
    assert fresh is not None and (fresh.name, fresh.version) == ("x", 2)
    missing = await repository.update(ex, saved.tutorial_id + 99, {"name": "x"})
    assert missing is None


def test_update_statement_refuses_columns_that_are_not_writable() -> None:
    with pytest.raises(ValueError, match="version"):
        repository.update_statement(("name", "version"), False)
    with pytest.raises(ValueError, match="search"):
        repository.update_statement(("search",), True)


async def test_delete_with_and_without_a_version(ex: Executor) -> None:
    first, second = await _add(ex, "one"), await _add(ex, "two")
    assert await repository.delete(ex, first.tutorial_id) is True
    assert await repository.delete(ex, first.tutorial_id) is False
    assert await repository.delete(ex, second.tutorial_id, expected_version=2) is False
    assert await repository.get(ex, second.tutorial_id) == second
    assert await repository.delete(ex, second.tutorial_id, expected_version=1) is True
    assert await repository.count(ex) == 0


async def test_keyset_pages_cover_everything_once_in_id_order(ex: Executor) -> None:
    ids = [(await _add(ex, f"t{n}")).tutorial_id for n in range(7)]
    seen: list[int] = []
    after = 0
    while True:
        page = await repository.page(ex, after_id=after, limit=3)
        seen += [row.tutorial_id for row in page]
        if len(page) < 3:
            break
        after = page[-1].tutorial_id
    assert seen == ids


async def test_tag_filter_needs_every_tag(ex: Executor) -> None:
    both = await _add(ex, "both", tags=["python", "sql"])
    await _add(ex, "python only", tags=["python"])
    await _add(ex, "none")
    found = await repository.page(ex, after_id=0, limit=10, tags=["sql", "python"])
    assert [row.tutorial_id for row in found] == [both.tutorial_id]
    python = await repository.page(ex, after_id=0, limit=10, tags=["python"])
    assert len(python) == 2


async def test_search_ranks_name_over_description_over_tags(ex: Executor) -> None:
    in_tags = await _add(ex, "c", tags=["postgres"])
    in_description = await _add(ex, "b", description="all about postgres")
    in_name = await _add(ex, "postgres in the name")
    await _add(ex, "unrelated")
    found = await repository.search(ex, "postgres", limit=10)
    assert [row.tutorial_id for row, _rank in found] == [
        in_name.tutorial_id,
        in_description.tutorial_id,
        in_tags.tutorial_id,
    ]
    ranks = [rank for _row, rank in found]
    assert ranks == sorted(ranks, reverse=True) and ranks[-1] > 0


async def test_search_pages_by_rank_and_id_are_disjoint(ex: Executor) -> None:
    for n in range(7):
        await _add(ex, f"async {n}", description="async" if n % 2 else None)
    pages: list[list[int]] = []
    after: tuple[float, int] | None = None
    while True:
        found = await repository.search(ex, "async", limit=3, after=after)
        pages.append([row.tutorial_id for row, _ in found])
        if len(found) < 3:
            break
        last, rank = found[-1]
        after = (rank, last.tutorial_id)
    everything = [row.tutorial_id for row, _ in await repository.search(ex, "async", limit=50)]
    assert [tutorial_id for page in pages for tutorial_id in page] == everything
    assert len(everything) == 7


async def test_search_with_tags_keeps_only_tagged_matches(ex: Executor) -> None:
    tagged = await _add(ex, "async python", tags=["python"])
    await _add(ex, "async rust", tags=["rust"])
    found = await repository.search(ex, "async", limit=10, tags=["python"])
    assert [row.tutorial_id for row, _ in found] == [tagged.tutorial_id]


async def test_bounded_search_is_exact_below_the_bound(ex: Executor) -> None:
    for n in range(5):
        await _add(ex, f"bound {n}", description="bound" * (n % 3))
    exact = await repository.search(ex, "bound", limit=10)
    bounded = await repository.search(ex, "bound", limit=10, candidates=100)
    assert bounded == exact


async def test_bounded_search_ranks_only_that_many_matches(ex: Executor) -> None:
    for n in range(20):
        await _add(ex, f"common word {n}")
    bounded = await repository.search(ex, "common", limit=50, candidates=5)
    assert len(bounded) == 5
    everything = await repository.search(ex, "common", limit=50)
    assert len(everything) == 20
    assert {row.tutorial_id for row, _ in bounded} <= {row.tutorial_id for row, _ in everything}


async def test_bounded_search_plans_for_its_words_inside_the_transaction(ex: Executor) -> None:
    await _add(ex, "plan")
    await repository.search(ex, "plan", limit=5, candidates=10)
    if isinstance(ex, AsyncSession):
        mode = (await ex.execute(text("SHOW plan_cache_mode"))).scalar_one()
    else:
        mode = await ex.fetchval("SHOW plan_cache_mode")
    assert mode == "force_custom_plan"  # SET LOCAL: until the transaction ends


async def test_both_paths_return_the_same_rows(database: Database, dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        saved = [
            await _add(connection, f"row {n}", f"https://r.io/{n}", tags=[f"t{n % 2}"])
            for n in range(4)
        ]
        direct_page = await repository.page(connection, after_id=0, limit=10, tags=["t1"])
        direct_search = await repository.search(connection, "row", limit=10)
    finally:
        await connection.close()
    async with database.session() as session:
        assert await repository.get(session, saved[0].tutorial_id) == saved[0]
        assert await repository.page(session, after_id=0, limit=10, tags=["t1"]) == direct_page
        assert await repository.search(session, "row", limit=10) == direct_search
