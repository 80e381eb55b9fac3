"""The unit of work: commit on success, roll back on error, close always, even when cancelled."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool

from tutorials import repository
from tutorials.db.session import Database
from tutorials.errors import Conflict, RetryableConflict


async def _count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM tutorials"))
    finally:
        await connection.close()


def _checked_out(database: Database) -> int:
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


async def test_commits_when_the_block_ends(database: Database, dsn: str) -> None:
    async with database.session() as session:
        await repository.add(session, {"name": "kept"})
    assert await _count(dsn) == 1


async def test_rolls_back_on_error(database: Database, dsn: str) -> None:
    with pytest.raises(RuntimeError):
        async with database.session() as session:
            await repository.add(session, {"name": "lost"})
            raise RuntimeError("boom")
    assert await _count(dsn) == 0
    assert _checked_out(database) == 0


async def test_database_errors_leave_as_domain_errors(database: Database, dsn: str) -> None:
    with pytest.raises(Conflict):
        async with database.session() as session:
            await repository.add(session, {"name": "a", "url": "https://same.io"})
            await repository.add(session, {"name": "b", "url": "https://same.io"})
    assert await _count(dsn) == 0


async def test_cancellation_mid_query_returns_the_connection(database: Database, dsn: str) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        async with database.session() as session:
            await repository.add(session, {"name": "never committed"})
            started.set()
            await session.execute(text("SELECT pg_sleep(5)"))

    task = asyncio.create_task(slow())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _checked_out(database) == 0
    assert await _count(dsn) == 0
    connection = await asyncpg.connect(dsn)
    try:
        open_transactions = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%'"
        )
    finally:
        await connection.close()
    assert open_transactions == 0


async def test_run_retries_retryable_conflicts(database: Database, dsn: str) -> None:
    attempts = 0

    async def flaky(session: AsyncSession) -> str:
        nonlocal attempts
        attempts += 1
        await repository.add(session, {"name": f"attempt {attempts}"})
        if attempts < 3:
            raise RetryableConflict("simulated serialization failure")
        return "done"

    assert await database.run(flaky) == "done"
    assert attempts == 3
    assert await _count(dsn) == 1  # the failed attempts rolled back


async def test_run_gives_up_after_the_configured_attempts(database: Database) -> None:
    attempts = 0

    async def always(_session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        raise RetryableConflict("still conflicting")

    with pytest.raises(RetryableConflict):
        await database.run(always)
    assert attempts == database.retry_attempts


async def test_concurrent_units_of_work_use_separate_sessions(database: Database, dsn: str) -> None:
    async def add(index: int) -> int:
        saved = await database.run(lambda s: repository.add(s, {"name": f"parallel {index}"}))
        return saved.tutorial_id

    ids = await asyncio.gather(*(add(i) for i in range(40)))
    assert len(set(ids)) == 40
    assert await _count(dsn) == 40
    assert _checked_out(database) == 0
