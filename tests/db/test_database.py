"""`Database`: units of work on asyncpg's pool and ORM sessions, on a real PostgreSQL.

Each promise of the module docstring is provoked for real: commits before returning, rollbacks,
SQLSTATE classification, retries of real and injected conflicts, lost connections, statement
timeouts, pool exhaustion, cancellation (mid-statement and while queued), fairness, dispose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tutorials import repository
from tutorials.db.database import Database
from tutorials.errors import Conflict, InvalidInput, RetryableConflict, Timeout, Unavailable
from tutorials.settings import Settings

Connection = Any  # asyncpg's pool connection


async def _count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM tutorials"))
    finally:
        await connection.close()


async def _open_transactions(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
        )
    finally:
        await connection.close()


def _in_use(database: Database) -> int:
    size, idle, _max = database.pool_stats()
    return size - idle


@asynccontextmanager
async def _small_database(
    database_url: URL, settings: Settings, **overrides: object
) -> AsyncIterator[Database]:
    """A `Database` on a pool of one connection (unless told otherwise), closed after."""
    database = Database.from_url(
        database_url, settings.model_copy(update={"pool_size": 1, **overrides})
    )
    try:
        yield database
    finally:
        await database.dispose()


class _Hold:
    """A unit of work that keeps its connection until `release` is set."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, _connection: Connection) -> None:
        self.holding.set()
        await self.release.wait()


async def _insert(connection: Connection, name: str, url: str | None = None) -> Any:
    return await repository.insert(connection, name, url, None, [])


# --- write / read: autocommit -----------------------------------------------------------------


async def test_a_write_has_committed_when_it_returns(database: Database, dsn: str) -> None:
    saved = await database.write(lambda c: _insert(c, "durable"))
    assert saved.tutorial_id >= 1
    assert await _count(dsn) == 1
    assert _in_use(database) == 0


async def test_database_errors_leave_as_domain_errors(database: Database, dsn: str) -> None:
    await database.write(lambda c: _insert(c, "a", "https://same.io/"))
    with pytest.raises(Conflict, match="url already exists"):
        await database.write(lambda c: _insert(c, "b", "https://same.io/"))
    with pytest.raises(InvalidInput, match="name must not be blank"):
        await database.write(lambda c: _insert(c, "   "))
    with pytest.raises(InvalidInput):  # asyncpg's own client-side refusal (beyond bigint)
        await database.read(lambda c: repository.get(c, 2**64))
    assert await _count(dsn) == 1
    assert _in_use(database) == 0
    assert await database.read(repository.count) == 1  # those connections are still good


async def test_a_statement_past_its_timeout_is_a_timeout(
    database_url: URL, settings: Settings
) -> None:
    async with _small_database(database_url, settings, statement_timeout_ms=100) as database:
        with pytest.raises(Timeout):
            await database.read(lambda c: c.execute("SELECT pg_sleep(2)"))
        assert await database.read(lambda c: c.fetchval("SELECT 1")) == 1


#: Inside this unit of work the server waits as long as it is told: only the client's
#: deadline can end the statement, as when the network dies under it.
_NO_SERVER_TIMEOUT = {"statement_timeout": "0"}


async def _sleep(connection: Connection, seconds: float) -> None:
    await connection.execute("SELECT pg_sleep($1)", seconds)


async def test_a_unit_of_work_past_its_client_deadline_is_given_up(
    database_url: URL, settings: Settings, dsn: str
) -> None:
    """A unit the server does not stop ends at the client's deadline (the statement timeout
    plus a second), as `Unavailable`, and its connection is replaced: nothing is held open."""
    async with _small_database(database_url, settings, statement_timeout_ms=300) as database:
        assert database.unit_deadline == 1.3
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable, match=r"did not answer within 1\.3 s"):
            await database.transaction(lambda c: _sleep(c, 30), local=_NO_SERVER_TIMEOUT)
        assert 1.2 < asyncio.get_running_loop().time() - started < 5
        assert _in_use(database) == 0
        assert await database.read(lambda c: c.fetchval("SELECT 1")) == 1
        assert await _open_transactions(dsn) == 0


async def test_only_the_units_past_their_deadline_are_given_up(
    database_url: URL, settings: Settings
) -> None:
    """Units started together: the ones that finish in time are untouched, and a unit given
    a deadline of its own (an import's batch, an export) keeps it."""
    async with _small_database(
        database_url, settings, statement_timeout_ms=300, pool_size=4
    ) as database:
        slow = database.transaction(lambda c: _sleep(c, 30), local=_NO_SERVER_TIMEOUT)
        longer = database.transaction(
            lambda c: _sleep(c, 2), local=_NO_SERVER_TIMEOUT, statement_timeout=9
        )
        quick = [database.read(lambda c: c.fetchval("SELECT 1")) for _ in range(2)]
        outcomes = await asyncio.gather(slow, longer, *quick, return_exceptions=True)
        assert isinstance(outcomes[0], Unavailable)
        assert outcomes[1:] == [None, 1, 1]
        assert _in_use(database) == 0


async def test_cancellation_mid_statement_returns_the_connection(
    database: Database, dsn: str
) -> None:
    started = asyncio.Event()

    async def slow(connection: Connection) -> None:
        started.set()
        await connection.execute("SELECT pg_sleep(5)")

    task = asyncio.create_task(database.read(slow))
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(3):  # the slot came back: the pool serves the next call
        assert await database.read(lambda c: c.fetchval("SELECT 1")) == 1
    assert _in_use(database) == 0
    assert await _open_transactions(dsn) == 0


async def test_conflicts_are_retried_with_the_whole_unit(database: Database, dsn: str) -> None:
    attempts = 0

    async def flaky(connection: Connection) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RetryableConflict("simulated serialization failure")
        await _insert(connection, "third time")
        return "done"

    assert await database.write(flaky) == "done"
    assert attempts == 3
    assert await _count(dsn) == 1


async def test_a_real_deadlock_is_retried(database: Database) -> None:
    """40P01 from the server is classified and the loser's whole transaction runs again."""
    a = await database.write(lambda c: _insert(c, "a"))
    b = await database.write(lambda c: _insert(c, "b"))
    both_locked = asyncio.Barrier(2)
    calls = 0

    async def lock(first: int, second: int) -> None:
        async def work(connection: Connection) -> None:
            nonlocal calls
            calls += 1
            await connection.execute(
                "UPDATE tutorials SET name = name WHERE tutorial_id = $1", first
            )
            if calls <= 2:
                await both_locked.wait()
            await connection.execute(
                "UPDATE tutorials SET name = name WHERE tutorial_id = $1", second
            )

        await database.transaction(work)

    await asyncio.gather(lock(a.tutorial_id, b.tutorial_id), lock(b.tutorial_id, a.tutorial_id))
    assert calls == 3  # one of the two was chosen as the deadlock victim and ran again
    assert _in_use(database) == 0


async def test_retries_give_up_after_the_configured_attempts(database: Database) -> None:
    attempts = 0

    async def always(_connection: Connection) -> None:
        nonlocal attempts
        attempts += 1
        raise RetryableConflict("still conflicting")

    with pytest.raises(RetryableConflict):
        await database.write(always)
    assert attempts == database.retry_attempts == 3


async def test_a_lost_connection_is_retried_for_reads_only(database: Database) -> None:
    calls = 0

    async def dies_once(connection: Connection) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return int(await connection.fetchval("SELECT 1"))

    assert await database.read(dies_once) == 1
    assert calls == 2
    calls = 0
    with pytest.raises(Unavailable, match="lost the connection"):
        await database.write(dies_once)
    assert calls == 1
    assert _in_use(database) == 0


async def test_an_unreachable_database_is_unavailable(settings: Settings) -> None:
    database = Database.from_url(
        "postgresql://postgres@127.0.0.1:9/none", settings.model_copy(update={"connect_timeout": 1})
    )
    try:
        with pytest.raises(Unavailable, match="cannot reach the database"):
            await database.read(lambda c: c.fetchval("SELECT 1"))
    finally:
        await database.dispose()


# --- transaction / stream ---------------------------------------------------------------------


async def test_a_transaction_commits_whole_or_not_at_all(database: Database, dsn: str) -> None:
    async def two(connection: Connection) -> None:
        await _insert(connection, "one")
        await _insert(connection, "two")

    await database.transaction(two)
    assert await _count(dsn) == 2

    async def half(connection: Connection) -> None:
        await _insert(connection, "three")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await database.transaction(half)
    assert await _count(dsn) == 2
    assert await _open_transactions(dsn) == 0


async def test_a_read_only_transaction_refuses_writes(database: Database) -> None:
    with pytest.raises(Unavailable):  # 25006 read_only_sql_transaction, as on a replica
        await database.transaction(lambda c: _insert(c, "nope"), readonly=True)


async def test_streams_stay_within_their_budget(database_url: URL, settings: Settings) -> None:
    """However many streams are open, reads still find a connection."""
    async with _small_database(
        database_url, settings, pool_size=3, stream_connections=2, pool_timeout=0.3
    ) as database:
        assert database.stream_connections == 2
        holds = [_Hold(), _Hold()]
        streams = [asyncio.create_task(database.stream(hold)) for hold in holds]
        for hold in holds:
            await hold.holding.wait()
        with pytest.raises(Unavailable, match="no streaming connection"):
            await database.stream(lambda c: c.fetchval("SELECT 1"))
        assert await database.read(lambda c: c.fetchval("SELECT 2")) == 2
        for hold in holds:
            hold.release.set()
        await asyncio.gather(*streams)


def test_at_least_one_connection_is_left_to_reads_and_writes(settings: Settings) -> None:
    small = Database.from_url(
        "postgresql://u@h/db", settings.model_copy(update={"pool_size": 4, "stream_connections": 9})
    )
    assert small.stream_connections == 3


# --- admission ----------------------------------------------------------------------------------


async def test_an_exhausted_pool_fails_fast(database_url: URL, settings: Settings) -> None:
    async with _small_database(database_url, settings, pool_timeout=0.2) as database:
        hold = _Hold()
        task = asyncio.create_task(database.write(hold))
        await hold.holding.wait()
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable, match="no database connection"):
            await database.read(lambda c: c.fetchval("SELECT 1"))
        assert asyncio.get_running_loop().time() - started < 1.0
        hold.release.set()
        await task


async def test_cancelled_while_queued_gives_its_turn_back(
    database_url: URL, settings: Settings
) -> None:
    async with _small_database(database_url, settings, pool_timeout=5) as database:
        hold = _Hold()
        holder = asyncio.create_task(database.write(hold))
        await hold.holding.wait()
        queued = asyncio.create_task(database.read(lambda c: c.fetchval("SELECT 1")))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        hold.release.set()
        await holder
        # Had the cancelled caller kept its place or a slot, this would wait out the 5 s.
        async with asyncio.timeout(2):
            assert await database.read(lambda c: c.fetchval("SELECT 3")) == 3


async def test_connections_go_to_waiters_in_turn(database_url: URL, settings: Settings) -> None:
    """A task that asks again as soon as it is done does not keep the connection from one
    that was already waiting (which would starve into the pool timeout under load)."""
    order: list[str] = []
    holding = asyncio.Event()
    async with _small_database(database_url, settings) as database:

        async def hold_then_loop() -> None:
            async def first(connection: Connection) -> None:
                holding.set()
                await connection.execute("SELECT pg_sleep(0.05)")

            await database.read(first)
            order.append("loop")
            for _ in range(20):
                await database.read(lambda c: c.fetchval("SELECT 1"))
                order.append("loop")

        async def wait_once() -> None:
            await holding.wait()
            await database.read(lambda c: c.fetchval("SELECT 1"))
            order.append("waiter")

        await asyncio.gather(hold_then_loop(), wait_once())
    assert order.index("waiter") <= 1, order


async def test_work_running_through_close_finishes(database_url: URL, settings: Settings) -> None:
    """`dispose` waits for connections in use to come back, then closes them."""
    started = asyncio.Event()
    release = asyncio.Event()
    running = 0

    async def hold(connection: Connection) -> int:
        nonlocal running
        running += 1
        if running == 3:
            started.set()
        await release.wait()
        return int(await connection.fetchval("SELECT 1"))

    async with _small_database(database_url, settings, pool_size=3) as database:
        tasks = [asyncio.create_task(database.read(hold)) for _ in range(3)]
        await started.wait()
        closing = asyncio.create_task(database.dispose())
        await asyncio.sleep(0.05)
        assert not closing.done()
        release.set()
        assert await asyncio.gather(*tasks) == [1, 1, 1]
        await closing
        with pytest.raises(Unavailable, match="closed"):
            await database.read(lambda c: c.fetchval("SELECT 1"))


# --- ORM sessions ----------------------------------------------------------------------------


async def test_a_session_commits_when_the_block_ends(database: Database, dsn: str) -> None:
    async with database.session() as session:
        await repository.insert(session, "kept", None, None, [])
    assert await _count(dsn) == 1


async def test_a_session_rolls_back_on_error(database: Database, dsn: str) -> None:
    with pytest.raises(RuntimeError):
        async with database.session() as session:
            await repository.insert(session, "lost", None, None, [])
            raise RuntimeError("boom")
    assert await _count(dsn) == 0
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_session_errors_leave_as_domain_errors(database: Database, dsn: str) -> None:
    with pytest.raises(Conflict):
        async with database.session() as session:
            await repository.insert(session, "a", "https://same.io/", None, [])
            await repository.insert(session, "b", "https://same.io/", None, [])
    assert await _count(dsn) == 0


async def test_a_cancelled_session_returns_its_connection(database: Database, dsn: str) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        async with database.session() as session:
            await repository.insert(session, "never committed", None, None, [])
            started.set()
            await session.execute(text("SELECT pg_sleep(5)"))

    task = asyncio.create_task(slow())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await _count(dsn) == 0
    assert await _open_transactions(dsn) == 0


async def test_run_retries_the_whole_session(database: Database, dsn: str) -> None:
    attempts = 0

    async def flaky(session: Any) -> str:
        nonlocal attempts
        attempts += 1
        await repository.insert(session, f"attempt {attempts}", None, None, [])
        if attempts < 3:
            raise RetryableConflict("simulated serialization failure")
        return "done"

    assert await database.run(flaky) == "done"
    assert attempts == 3
    assert await _count(dsn) == 1  # the failed attempts rolled back


async def test_sessions_have_a_pool_of_their_own(database_url: URL, settings: Settings) -> None:
    """ORM units of work never take the service's connections, nor the reverse."""
    async with _small_database(database_url, settings, session_pool_size=1) as database:
        async with database.session() as session:
            await session.execute(text("SELECT 1"))
            assert await database.read(lambda c: c.fetchval("SELECT 5")) == 5
        assert database.engine.pool.size() == 1  # type: ignore[attr-defined]
