"""A backend terminated under the service's units of work (`pg_terminate_backend`: what an
operator, a failover tool or PostgreSQL's own shutdown does to a session).

The promises of `Database` when the connection dies: a write or a transaction answers
`Unavailable` (never retried: the server may have committed before the connection went), a
read is retried once on another connection and succeeds, a pooled connection found dead when
it is pinged is replaced without a word, and nothing stays checked out.

asyncpg returns a pool connection that dies to the pool at once and detaches the proxy the
unit of work holds; every method of a detached proxy raises `InterfaceError`. These tests
failed with exactly that (a bare `InterfaceError`, a 500 over HTTP) before `Database` stopped
calling the proxy after a failure.

They use the suite's own server (TEST_DATABASE_URL or the embedded one): terminating one of
our own sessions harms nobody else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from tests.reliability.harness import scalar
from tests.support import run_async

from tutorials import repository
from tutorials.db.database import Connection
from tutorials.db.session import Database
from tutorials.errors import Unavailable


async def _terminate(dsn: str, pid: int) -> bool:
    value = await scalar(dsn, "SELECT pg_terminate_backend($1)", pid)
    assert isinstance(value, bool)
    return value


def _in_use(database: Database) -> int:
    opened, idle, _ = database.pool_stats()
    return opened - idle


async def _killed_mid_statement(
    database: Database, dsn: str, run: Callable[[Callable[[Connection], Awaitable[Any]]], Any]
) -> tuple[object, list[int]]:
    """Run a unit of work whose first backend is terminated in the middle of a statement;
    its outcome (a value or the exception) and the backends it ran on."""
    pids: list[int] = []
    started = asyncio.Event()

    async def work(connection: Connection) -> int:
        pids.append(connection.get_server_pid())
        if len(pids) == 1:
            started.set()
            await connection.execute("SELECT pg_sleep(10)")
        return len(await repository.page(connection, after_id=0, limit=10))

    task = asyncio.ensure_future(run(work))
    async with asyncio.timeout(8):
        await started.wait()
        assert await _terminate(dsn, pids[0])
        try:
            outcome: object = await task
        except Exception as exc:
            outcome = exc
    return outcome, pids


@pytest.mark.parametrize("shape", ["write", "transaction"])
async def test_a_write_whose_backend_is_terminated_is_unavailable(
    database: Database, dsn: str, shape: str
) -> None:
    outcome, pids = await _killed_mid_statement(database, dsn, getattr(database, shape))
    assert isinstance(outcome, Unavailable), repr(outcome)
    assert outcome.detail == "lost the connection to the database"
    assert len(pids) == 1  # not retried
    assert _in_use(database) == 0
    # The same Database serves at once.
    assert await database.write(lambda c: repository.count(c)) == 0


async def test_a_read_whose_backend_is_terminated_is_retried_once(
    database: Database, dsn: str
) -> None:
    outcome, pids = await _killed_mid_statement(database, dsn, database.read)
    assert outcome == 0
    assert len(pids) == 2 and pids[0] != pids[1]
    assert _in_use(database) == 0


async def test_a_pooled_connection_found_dead_by_its_ping_is_replaced(
    database: Database, dsn: str
) -> None:
    first = await database.read(lambda c: c.fetchval("SELECT pg_backend_pid()"))
    assert isinstance(first, int)
    database.ping_after_idle = 0.0  # ping at every checkout (10 s of idleness otherwise)
    # Terminate it and wait without running our event loop, so the pool has not yet seen the
    # connection close when it hands it out: the ping is the first to meet the dead socket.
    assert run_async(lambda: _terminate(dsn, first))
    time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop on purpose
    second = await database.read(lambda c: c.fetchval("SELECT pg_backend_pid()"))
    assert isinstance(second, int) and second != first
    assert _in_use(database) == 0
    assert await scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", first) == 0


async def test_asyncpg_detaches_a_dead_connections_proxy(dsn: str) -> None:
    """The library behaviour the fix relies on (asyncpg 0.32), pinned so an upgrade that
    changes it is noticed: a pool connection that dies is released by asyncpg itself."""
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=1)
    try:
        connection = await pool.acquire()
        pid = connection.get_server_pid()
        task = asyncio.ensure_future(connection.execute("SELECT pg_sleep(10)"))
        await asyncio.sleep(0.2)
        assert await _terminate(dsn, pid)
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await task
        with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
            connection.is_closed()
        await pool.release(connection)  # a no-op, as documented for a released connection
        assert pool.get_size() == 0
    finally:
        await pool.close()
