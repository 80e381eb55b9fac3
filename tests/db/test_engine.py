"""The engine's defaults: stale-connection detection that survives a real server restart.

The engine replaces SQLAlchemy's pre-ping (three round trips per checkout on asyncpg) with a
checkout check that costs nothing for a connection in use, so these tests restart a real
PostgreSQL (a private embedded server in a temporary root) under an idle, full pool and count
failed operations afterwards: there must be none, on the fast path and on the ORM path, for
writes (which are never retried) as well as reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support import admin_execute, run_async

from tutorials import repository
from tutorials.db import engine as engine_module
from tutorials.db.embedded import EmbeddedPostgres
from tutorials.db.engine import take_idle_connection, takes_idle_connections
from tutorials.db.migrate import upgrade
from tutorials.db.session import Database
from tutorials.errors import Unavailable
from tutorials.settings import Settings, normalize_database_url

POOL = 4


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    """A private PostgreSQL of this test's own, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="tutorials-test-", dir="/tmp"))
    root.chmod(0o755)
    server = EmbeddedPostgres(root)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def private_url(private_server: EmbeddedPostgres) -> URL:
    url = normalize_database_url(await asyncio.to_thread(private_server.start))
    database = Database.from_url(url, _settings())
    try:
        await upgrade(database.engine)
    finally:
        await database.dispose()
    return url


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "auto_migrate": False,
        "pool_size": POOL,
        "max_overflow": 0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _database(url: URL, **overrides: object) -> AsyncIterator[Database]:
    database = Database.from_url(url, _settings(**overrides))
    try:
        yield database
    finally:
        await database.dispose()


async def _backend_pids(database: Database, count: int = POOL) -> set[int]:
    """Check out `count` pooled connections at once (so that many exist); their backend pids."""

    async def pid(connection: asyncpg.Connection) -> int:
        await connection.execute("SELECT pg_sleep(0.05)")
        return int(await connection.fetchval("SELECT pg_backend_pid()"))

    return set(await asyncio.gather(*(database.fast(pid) for _ in range(count))))


async def _mixed_operations(database: Database, count: int) -> int:
    """Writes and reads on both paths, concurrently; returns how many failed."""

    async def one(index: int) -> None:
        saved = await database.fast(lambda c: repository.add(c, {"name": f"after {index}"}))
        assert await database.fast(lambda c: repository.get(c, saved.tutorial_id)) is not None
        async with database.session() as session:
            await repository.update(session, saved.tutorial_id, {"name": f"orm {index}"})

    outcomes = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    return sum(1 for outcome in outcomes if isinstance(outcome, BaseException))


async def test_an_idle_pool_survives_a_server_restart(
    private_server: EmbeddedPostgres, private_url: URL
) -> None:
    async with _database(private_url) as database:
        before = await _backend_pids(database)
        assert len(before) == POOL
        await asyncio.to_thread(private_server.stop)
        await asyncio.to_thread(private_server.start)
        assert await _mixed_operations(database, 3 * POOL) == 0
        after = await _backend_pids(database)
        assert after.isdisjoint(before)  # every dead connection was replaced, none reused


async def test_without_detection_the_same_restart_fails_a_write(
    private_server: EmbeddedPostgres, private_url: URL
) -> None:
    """The control: the test above can fail. Dead pooled connections do break the next write."""
    async with _database(private_url, pool_pre_ping=False) as database:
        await _backend_pids(database)
        await asyncio.to_thread(private_server.stop)
        await asyncio.to_thread(private_server.start)
        with pytest.raises(Unavailable):
            await database.fast(lambda c: repository.add(c, {"name": "lost"}))


async def _kill_idle_connection_behind_a_blocked_loop(database: Database, url: URL) -> None:
    """Terminate the pool's one connection while the event loop cannot notice (it is blocked),
    so the connection still looks open at the next checkout."""
    (pid,) = await _backend_pids(database, 1)
    # Blocking on purpose, from another thread's loop: ours must not run until the next call.
    run_async(lambda: admin_execute(url, f"SELECT pg_terminate_backend({pid})"))
    time.sleep(0.3)  # noqa: ASYNC251 - the backend is gone, and our loop has not noticed


async def test_a_connection_idle_for_long_is_pinged_before_use(
    private_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.1)
    async with _database(private_url, pool_size=1) as database:
        await _kill_idle_connection_behind_a_blocked_loop(database, private_url)
        saved = await database.fast(lambda c: repository.add(c, {"name": "after the kill"}))
        assert saved.tutorial_id >= 1


async def test_without_the_idle_ping_that_write_fails(
    private_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    async with _database(private_url, pool_size=1) as database:
        await _kill_idle_connection_behind_a_blocked_loop(database, private_url)
        with pytest.raises(Unavailable):
            await database.fast(lambda c: repository.add(c, {"name": "lost"}))
        # ...and a read in the same situation is retried once on a fresh connection.
        await _kill_idle_connection_behind_a_blocked_loop(database, private_url)
        assert await database.fast(lambda c: repository.count(c), idempotent=True) == 0


async def test_connections_carry_the_server_settings(database: Database) -> None:
    async def show(connection: asyncpg.Connection) -> tuple[str, str, str]:
        row = await connection.fetchrow(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
            "current_setting('application_name')"
        )
        assert row is not None
        return (row[0], row[1], row[2])

    assert await database.fast(show) == ("15s", "5s", "tutorials")
    async with database.session() as session:
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        assert raw.driver_connection is not None
        assert await show(raw.driver_connection) == ("15s", "5s", "tutorials")


async def _pid(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def test_an_idle_connection_is_taken_without_a_greenlet(database_url: URL) -> None:
    async with _database(database_url) as database:
        assert take_idle_connection(database.engine) is None  # none idle: connect in a greenlet
        pid = await database.fast(_pid)
        taken = take_idle_connection(database.engine)  # plain code, no greenlet around it
        assert taken is not None and taken.driver_connection is not None
        try:
            assert await _pid(taken.driver_connection) == pid  # the pooled one, reused
            assert take_idle_connection(database.engine) is None  # it was the only one
        finally:
            taken.close()
        assert database.engine.pool.checkedin() == 1


async def test_connections_to_replace_are_left_to_the_greenlet_quietly(
    database_url: URL,
) -> None:
    """Recycled or invalidated: taking it directly gives None, warns nothing, loses no slot,
    and the next call reconnects."""
    async with _database(database_url, pool_recycle=1) as database:
        first = await database.fast(_pid)
        await asyncio.sleep(1.1)  # past pool_recycle
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. a connect() coroutine made and never awaited
            assert take_idle_connection(database.engine) is None
        assert database.engine.pool.checkedin() == 1  # the entry went back to the pool
        second = await database.fast(_pid)
        assert second != first

        proxied = await database.engine.raw_connection()
        proxied.invalidate()  # back in the pool with no connection at all
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert take_idle_connection(database.engine) is None
        assert await database.fast(_pid) not in (first, second)


async def test_a_callers_own_engine_is_never_taken_from_directly(database_url: URL) -> None:
    """With SQLAlchemy's own pre-ping (which awaits at every checkout) the fast path still
    works: only engines made by `create_engine` get the greenlet-free checkout."""
    own = Database(create_async_engine(database_url, pool_pre_ping=True, pool_size=2))
    try:
        assert not takes_idle_connections(own.engine)
        pids = {await own.fast(_pid) for _ in range(4)}
        assert len(pids) == 1  # the one pooled connection, pre-pinged and reused each time
    finally:
        await own.dispose()
    async with _database(database_url) as ours:
        assert takes_idle_connections(ours.engine)
