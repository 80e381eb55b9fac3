"""The library face, used exactly as the tutorial does, on the default database."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL

from tutorials import (
    Conflict,
    InvalidInput,
    NotFound,
    StaleVersion,
    Tutorial,
    TutorialCreate,
    TutorialPatch,
    delete_tutorial,
    get_session,
    get_tutorial,
    list_tutorials,
    save_tutorial,
    search_tutorials,
    update_tutorial,
)


async def test_the_tutorial_flow(library_env: URL, dsn: str) -> None:
    saved = await save_tutorial(Tutorial(name="Async SQLAlchemy"))
    assert saved.tutorial_id is not None
    found = await get_tutorial(saved.tutorial_id)
    assert found is not None and found.name == "Async SQLAlchemy"
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM tutorials") == 1
        assert await delete_tutorial(saved.tutorial_id) is True
        assert await connection.fetchval("SELECT count(*) FROM tutorials") == 0
    finally:
        await connection.close()
    assert await delete_tutorial(saved.tutorial_id) is False
    assert await get_tutorial(saved.tutorial_id) is None


async def test_get_session_commits_and_rolls_back(library_env: URL) -> None:
    async with get_session() as session:
        session.add(Tutorial(name="via session"))
    with pytest.raises(RuntimeError):
        async with get_session() as session:
            session.add(Tutorial(name="rolled back"))
            await session.flush()
            raise RuntimeError("boom")
    async with get_session() as session:
        names = (await session.scalars(select(Tutorial.name))).all()
    assert names == ["via session"]


async def test_save_validates_and_maps_conflicts(library_env: URL) -> None:
    with pytest.raises(InvalidInput, match="name"):
        await save_tutorial(Tutorial(name="   "))
    with pytest.raises(InvalidInput, match="url"):
        await save_tutorial(Tutorial(name="ok", url="ftp://x"))
    await save_tutorial(TutorialCreate(name="first", url="https://same.io"))
    with pytest.raises(Conflict, match="url already exists"):
        await save_tutorial(Tutorial(name="second", url="https://same.io"))


async def test_save_of_a_stored_tutorial_updates_it_once(library_env: URL) -> None:
    saved = await save_tutorial(Tutorial(name="v1"))
    saved.name = "v2"
    again = await save_tutorial(saved)
    assert (again.tutorial_id, again.name, again.version) == (saved.tutorial_id, "v2", 2)
    with pytest.raises(StaleVersion):
        await save_tutorial(saved)  # still carries version 1


async def test_update_list_and_search(library_env: URL) -> None:
    a = await save_tutorial(TutorialCreate(name="Async PostgreSQL", tags=["db"]))
    await save_tutorial(TutorialCreate(name="Gardening", tags=["outdoors"]))
    updated = await update_tutorial(
        a.tutorial_id, TutorialPatch(description="asyncpg in depth"), expected_version=1
    )
    assert updated.description == "asyncpg in depth"
    assert [t.name for t in (await list_tutorials(tags=["DB"])).items] == ["Async PostgreSQL"]
    assert [t.name for t in (await search_tutorials("asyncpg")).items] == ["Async PostgreSQL"]
    with pytest.raises(InvalidInput):
        await get_tutorial(2**63)
    with pytest.raises(InvalidInput):
        await search_tutorials("bad\x00query")


async def test_update_and_delete_tell_missing_from_stale(library_env: URL) -> None:
    saved = await save_tutorial(TutorialCreate(name="versioned"))
    with pytest.raises(NotFound):
        await update_tutorial(saved.tutorial_id + 1000, TutorialPatch(name="x"))
    with pytest.raises(NotFound):
        await update_tutorial(saved.tutorial_id + 1000, TutorialPatch())
    unchanged = await update_tutorial(saved.tutorial_id, TutorialPatch())
    assert (unchanged.name, unchanged.version) == ("versioned", 1)
    with pytest.raises(StaleVersion) as caught:
        await delete_tutorial(saved.tutorial_id, expected_version=5)
    assert caught.value.current_version == 1
    assert await delete_tutorial(saved.tutorial_id, expected_version=1) is True


async def test_pages_through_everything_once(library_env: URL) -> None:
    for index in range(7):
        await save_tutorial(TutorialCreate(name=f"async {index}", tags=["t"]))
    for listing in (
        lambda cursor: list_tutorials(limit=3, cursor=cursor, tags=["t"]),
        lambda cursor: search_tutorials("async", limit=3, cursor=cursor),
    ):
        seen: list[int] = []
        cursor: str | None = None
        while True:
            page = await listing(cursor)
            seen += [t.tutorial_id for t in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 7


async def test_only_database_url_is_needed(
    empty_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty database and DATABASE_URL alone: the first call builds the engine and migrates."""
    from tutorials import close_default_database, get_settings

    monkeypatch.setenv("DATABASE_URL", empty_database_url.render_as_string(hide_password=False))
    monkeypatch.delenv("TUTORIALS_AUTO_MIGRATE", raising=False)
    get_settings.cache_clear()
    try:
        saved = await save_tutorial(Tutorial(name="first call"))
        found = await get_tutorial(saved.tutorial_id)
        assert found is not None
        assert found.name == "first call"
    finally:
        await close_default_database()
        get_settings.cache_clear()


async def test_search_takes_its_candidate_bound_from_settings(
    library_env: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tutorials import close_default_database, get_settings

    for index in range(5):
        await save_tutorial(TutorialCreate(name=f"candidate {index}"))
    assert len((await search_tutorials("candidate", limit=100)).items) == 5
    monkeypatch.setenv("TUTORIALS_SEARCH_CANDIDATES", "2")
    get_settings.cache_clear()
    await close_default_database()  # settings are read when the default database is built
    assert len((await search_tutorials("candidate", limit=100)).items) == 2
