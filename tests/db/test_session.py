"""The unit of work: commit on success, roll back on error, close always, even when cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool

from tutorials import repository
from tutorials.db.session import Database
from tutorials.errors import (
    Conflict,
    InvalidInput,
    RetryableConflict,
    Timeout,
    Unavailable,
)
from tutorials.settings import Settings


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


@asynccontextmanager
async def _small_database(
    database_url: URL, settings: Settings, **pool: object
) -> AsyncIterator[Database]:
    """A `Database` on a pool of one connection (unless `pool` says otherwise), disposed after."""
    overrides = {"pool_size": 1, "max_overflow": 0, **pool}
    database = Database.from_url(database_url, settings.model_copy(update=overrides))
    try:
        yield database
    finally:
        await database.dispose()


class _Hold:
    """A `fast` work that keeps its connection until `release` is set."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, _connection: asyncpg.Connection) -> None:
        self.holding.set()
        await self.release.wait()


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


# --- Database.fast: one statement in autocommit on a connection from the same pool. ---


async def test_fast_commits_each_statement_before_returning(database: Database, dsn: str) -> None:
    saved = await database.fast(lambda c: repository.add(c, {"name": "durable"}))
    assert await _count(dsn) == 1
    assert saved.tutorial_id >= 1
    assert _checked_out(database) == 0


async def test_fast_database_errors_leave_as_domain_errors(database: Database, dsn: str) -> None:
    await database.fast(lambda c: repository.add(c, {"name": "a", "url": "https://same.io"}))
    with pytest.raises(Conflict, match="url already exists"):
        await database.fast(lambda c: repository.add(c, {"name": "b", "url": "https://same.io"}))
    with pytest.raises(InvalidInput, match="name must not be blank"):
        await database.fast(lambda c: repository.add(c, {"name": "   "}))
    with pytest.raises(InvalidInput):  # asyncpg's own client-side refusal (beyond bigint)
        await database.fast(lambda c: repository.get(c, 2**64))
    assert await _count(dsn) == 1
    assert _checked_out(database) == 0
    # The connections that saw those errors are still good.
    assert await database.fast(repository.count) == 1


async def test_fast_statement_timeout_is_a_timeout(database_url: URL, settings: Settings) -> None:
    database = Database.from_url(
        database_url, settings.model_copy(update={"statement_timeout_ms": 100})
    )
    try:
        with pytest.raises(Timeout):
            await database.fast(lambda c: c.execute("SELECT pg_sleep(2)"))
        assert await database.fast(lambda c: c.fetchval("SELECT 1")) == 1
        assert _checked_out(database) == 0
    finally:
        await database.dispose()


async def test_fast_cancellation_mid_statement_frees_the_pool_slot(database: Database) -> None:
    started = asyncio.Event()
    pids: list[int] = []

    async def slow(connection: asyncpg.Connection) -> None:
        pids.append(await connection.fetchval("SELECT pg_backend_pid()"))
        started.set()
        await connection.execute("SELECT pg_sleep(5)")

    task = asyncio.create_task(database.fast(slow))
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _checked_out(database) == 0
    # The cancelled connection was closed, not handed to the next caller mid-statement.
    pid = await database.fast(lambda c: c.fetchval("SELECT pg_backend_pid()"))
    assert pid != pids[0]


async def test_fast_retries_retryable_conflicts(database: Database, dsn: str) -> None:
    attempts = 0

    async def flaky(connection: asyncpg.Connection) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RetryableConflict("simulated serialization failure")
        await repository.add(connection, {"name": "third time"})
        return "done"

    assert await database.fast(flaky) == "done"
    assert attempts == 3
    assert await _count(dsn) == 1


async def test_fast_retries_a_real_deadlock(database: Database, dsn: str) -> None:
    """40P01 from the server is classified and retried (the loser of a real deadlock)."""
    a = await database.fast(lambda c: repository.add(c, {"name": "a"}))
    b = await database.fast(lambda c: repository.add(c, {"name": "b"}))
    both_locked = asyncio.Barrier(2)
    calls = 0

    async def lock(first: int, second: int) -> None:
        async def work(connection: asyncpg.Connection) -> None:
            nonlocal calls
            calls += 1
            async with connection.transaction():
                await connection.execute(
                    "UPDATE tutorials SET name = name WHERE tutorial_id = $1", first
                )
                if calls <= 2:
                    await both_locked.wait()
                await connection.execute(
                    "UPDATE tutorials SET name = name WHERE tutorial_id = $1", second
                )

        await database.fast(work)

    await asyncio.gather(lock(a.tutorial_id, b.tutorial_id), lock(b.tutorial_id, a.tutorial_id))
    assert calls == 3  # one of the two was chosen as the deadlock victim and ran again
    assert _checked_out(database) == 0


async def test_fast_gives_up_after_the_configured_attempts(database: Database) -> None:
    attempts = 0

    async def always(_connection: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        raise RetryableConflict("still conflicting")

    with pytest.raises(RetryableConflict):
        await database.fast(always)
    assert attempts == database.retry_attempts


async def test_fast_retries_a_lost_connection_only_when_idempotent(database: Database) -> None:
    calls = 0

    async def dies_once(connection: asyncpg.Connection) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return int(await connection.fetchval("SELECT 1"))

    assert await database.fast(dies_once, idempotent=True) == 1
    assert calls == 2
    calls = 0
    with pytest.raises(Unavailable, match="lost the connection"):
        await database.fast(dies_once)
    assert calls == 1
    assert _checked_out(database) == 0


async def test_fast_pool_exhaustion_fails_fast(database_url: URL, settings: Settings) -> None:
    async with _small_database(database_url, settings, pool_timeout=0.2) as database:
        hold = _Hold()
        task = asyncio.create_task(database.fast(hold))
        await hold.holding.wait()
        with pytest.raises(Unavailable, match="no database connection"):
            await database.fast(lambda c: c.fetchval("SELECT 1"))
        hold.release.set()
        await task


async def test_fast_waits_in_the_pool_when_orm_units_hold_its_connections(
    database_url: URL, settings: Settings
) -> None:
    """A free slot is not a free connection when an ORM unit of work holds one: the call then
    waits in the pool, under the same timeout, and gets the connection once it comes back."""
    async with _small_database(database_url, settings, pool_timeout=0.3) as database:
        async with database.session() as session:
            await session.execute(text("SELECT 1"))
            with pytest.raises(Unavailable, match="no database connection"):
                await database.fast(lambda c: c.fetchval("SELECT 1"))

        async def hold_briefly() -> None:
            async with database.session() as session:
                await session.execute(text("SELECT pg_sleep(0.1)"))

        holder = asyncio.create_task(hold_briefly())
        await asyncio.sleep(0.05)
        assert await database.fast(lambda c: c.fetchval("SELECT 2")) == 2
        await holder
        assert _checked_out(database) == 0


async def test_fast_cancelled_while_queued_gives_its_turn_back(
    database_url: URL, settings: Settings
) -> None:
    async with _small_database(database_url, settings, pool_timeout=5) as database:
        hold = _Hold()
        holder = asyncio.create_task(database.fast(hold))
        await hold.holding.wait()
        queued = asyncio.create_task(database.fast(lambda c: c.fetchval("SELECT 1")))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        hold.release.set()
        await holder
        # Had the cancelled caller kept its place or a slot, this would wait out the 5 s.
        async with asyncio.timeout(2):
            assert await database.fast(lambda c: c.fetchval("SELECT 3")) == 3
        assert _checked_out(database) == 0


async def test_fast_unreachable_database_is_unavailable(settings: Settings) -> None:
    database = Database.from_url(
        make_url("postgresql+asyncpg://postgres@127.0.0.1:9/none"),
        settings.model_copy(update={"connect_timeout": 1.0}),
    )
    try:
        with pytest.raises(Unavailable):
            await database.fast(lambda c: c.fetchval("SELECT 1"))
    finally:
        await database.dispose()


async def test_fast_closes_a_connection_left_in_a_transaction(database: Database) -> None:
    async def leaves_open(connection: asyncpg.Connection) -> int:
        await connection.execute("BEGIN")
        return int(await connection.fetchval("SELECT pg_backend_pid()"))

    pid = await database.fast(leaves_open)
    assert _checked_out(database) == 0
    assert await database.fast(lambda c: c.fetchval("SELECT pg_backend_pid()")) != pid


async def test_fast_hands_connections_to_waiters_in_turn(
    database_url: URL, settings: Settings
) -> None:
    """A task that asks again as soon as it is done does not keep the connection from one
    that was already waiting (the queue alone would let it take the connection straight back,
    and the waiter would starve into the pool timeout under load)."""
    order: list[str] = []
    holding = asyncio.Event()
    async with _small_database(database_url, settings) as database:

        async def hold_then_loop() -> None:
            async def first(connection: asyncpg.Connection) -> None:
                holding.set()
                await connection.execute("SELECT pg_sleep(0.05)")

            await database.fast(first)
            order.append("loop")
            for _ in range(20):
                await database.fast(lambda c: c.fetchval("SELECT 1"))
                order.append("loop")

        async def wait_once() -> None:
            await holding.wait()
            await database.fast(lambda c: c.fetchval("SELECT 1"))
            order.append("waiter")

        await asyncio.gather(hold_then_loop(), wait_once())
    assert order.index("waiter") <= 1, order


async def test_fast_calls_running_through_dispose_close_their_connections_cleanly(
    database_url: URL, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Disposing replaces the pool; connections still out come back to the old one, which has
    room for `pool_size` of them and must close the rest, awaiting the driver to do it."""
    started = asyncio.Event()
    release = asyncio.Event()
    running = 0

    async def hold(connection: asyncpg.Connection) -> int:
        nonlocal running
        running += 1
        if running == 3:
            started.set()
        await release.wait()
        return int(await connection.fetchval("SELECT 1"))

    async with _small_database(database_url, settings, max_overflow=2) as database:
        tasks = [asyncio.create_task(database.fast(hold)) for _ in range(3)]
        await started.wait()
        await database.dispose()
        release.set()
        assert await asyncio.gather(*tasks) == [1, 1, 1]
    assert "Exception closing connection" not in caplog.text
