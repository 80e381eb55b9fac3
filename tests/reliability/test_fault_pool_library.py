"""Pool exhaustion and cancellation, seen from the unit of work.

More concurrent slow units of work than connections: the excess fails fast as `Unavailable`
after the short pool wait, nothing hangs, and the pool returns to its idle size. Tasks
cancelled at any point (waiting for a connection, mid-statement, at commit) leak neither a
connection nor an open transaction.

Both pools of a `Database` are held to it: the service's (`Database.read` / `transaction`, on
asyncpg's pool, observed through `pool_stats()`) and the ORM sessions' (`Database.run`, on
SQLAlchemy's engine, `session_pool_size` connections). The server's view (pg_stat_activity, by
application name) judges both.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from tests.clusters import quiet_settings
from tests.reliability.harness import Figures, PrivateDb, ms, open_transactions, scalar, sessions_of

from tutorials import repository
from tutorials.db.database import Connection
from tutorials.db.session import Database
from tutorials.errors import Unavailable

POOL_SIZE = 2
POOL_TIMEOUT = 0.3
SLOW = 1.5
REQUESTS = 8
PATHS = ["service", "orm session"]


def _small_pool(path: str, **settings: object) -> dict[str, object]:
    """Settings giving the pool `path` uses POOL_SIZE connections."""
    key = "pool_size" if path == "service" else "session_pool_size"
    return {key: POOL_SIZE, **settings}


def _in_use(database: Database) -> int:
    """Connections checked out of the service's pool (asyncpg's)."""
    opened, idle, _ = database.pool_stats()
    return opened - idle


def _sleep(database: Database, path: str, seconds: float) -> Awaitable[object]:
    """A unit of work of `path` that holds its connection `seconds` on the server."""
    statement = f"SELECT pg_sleep({seconds})"
    if path == "service":
        return database.read(lambda connection: connection.execute(statement))
    return database.run(lambda session: session.execute(text(statement)))


async def _whole_pool_serves(database: Database, path: str, size: int) -> None:
    """`size` units of work of `path` holding a connection at once: all of them get one, so
    none leaked (a leaked connection makes one wait `pool_timeout`, then `Unavailable`)."""
    await asyncio.gather(*(_sleep(database, path, 0.05) for _ in range(size)))


@pytest.mark.parametrize("path", PATHS)
async def test_exhausted_pool_fails_fast_and_recovers(
    private_db: PrivateDb, figures: Figures, path: str
) -> None:
    app_name = "rel-exhaustion"
    database = Database.from_url(
        private_db.url,
        quiet_settings(**_small_pool(path, pool_timeout=POOL_TIMEOUT, application_name=app_name)),
    )
    outcomes: list[tuple[str, float]] = []

    async def one() -> None:
        started = time.monotonic()
        try:
            await _sleep(database, path, SLOW)
            outcomes.append(("ok", time.monotonic() - started))
        except Unavailable:
            outcomes.append(("unavailable", time.monotonic() - started))
        except Exception as exc:
            outcomes.append((f"{type(exc).__name__}: {exc}"[:200], time.monotonic() - started))

    try:
        async with asyncio.timeout(SLOW * 4 + 5):  # nothing hangs
            await asyncio.gather(*(one() for _ in range(REQUESTS)))
        server_side = await sessions_of(private_db.dsn, app_name)
        in_use = _in_use(database)
        # And the pool serves again at once, every connection of it.
        await _whole_pool_serves(database, path, POOL_SIZE)
    finally:
        await database.dispose()
    kinds = [kind for kind, _ in outcomes]
    refused = [seconds for kind, seconds in outcomes if kind == "unavailable"]
    figures(
        face=f"library ({path})",
        fault="pool exhaustion",
        pool_size=POOL_SIZE,
        sent=REQUESTS,
        ok=kinds.count("ok"),
        unavailable=len(refused),
        max_refusal_ms=ms(max(refused, default=None)),
        pool_timeout_ms=ms(POOL_TIMEOUT),
        idle_after=len(server_side),
    )
    assert sorted(kinds) == ["ok"] * POOL_SIZE + ["unavailable"] * (REQUESTS - POOL_SIZE)
    # Refused after the short pool wait, long before a slow request would have freed one.
    assert max(refused) < SLOW
    assert in_use == 0
    # The server saw exactly the pool's connections, all back and idle (no overflow, no leak).
    assert len(server_side) == POOL_SIZE
    assert all(row["state"] == "idle" for row in server_side), server_side


def _unit(database: Database, path: str, name: str, pause: float) -> Awaitable[None]:
    """One transaction of `path`: a row, a pause on the server, a second row."""
    statement = f"SELECT pg_sleep({pause})"

    async def on_connection(connection: Connection) -> None:
        await repository.insert(connection, name, None, None, [])
        await connection.execute(statement)
        await repository.insert(connection, name + " second", None, None, [])

    async def on_session(session: AsyncSession) -> None:
        await repository.insert(session, name, None, None, [])
        await session.execute(text(statement))
        await repository.insert(session, name + " second", None, None, [])

    if path == "service":
        return database.transaction(on_connection)
    return database.run(on_session)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
async def test_cancelled_units_of_work_leak_nothing(
    private_db: PrivateDb, figures: Figures, path: str
) -> None:
    """Cancel 64 tasks at random moments: before, during and after their statements."""
    app_name = "rel-cancel"
    database = Database.from_url(
        private_db.url,
        quiet_settings(pool_size=8, session_pool_size=8, pool_timeout=5, application_name=app_name),
    )
    rng = random.Random(6)
    completed: list[str] = []

    async def one(index: int) -> None:
        name = f"cancel {index}"
        pause = rng.choice([0.0, 0.01, 0.05, 0.2])
        await _unit(database, path, name, pause)
        completed.append(name)

    tasks = []
    cancelled = 0
    try:
        for index in range(64):
            tasks.append(asyncio.create_task(one(index)))
            if index % 8 == 7:
                await asyncio.sleep(rng.uniform(0, 0.03))
                for task in tasks[-8:]:
                    if rng.random() < 0.75 and task.cancel():
                        cancelled += 1
        async with asyncio.timeout(30):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        in_use = _in_use(database)
        idle = len(await sessions_of(private_db.dsn, app_name))
        await _whole_pool_serves(database, path, 8)
        leaked_transactions = await open_transactions(private_db.dsn, app_name)
        busy = [
            row for row in await sessions_of(private_db.dsn, app_name) if row["state"] != "idle"
        ]
    finally:
        await database.dispose()
    unexpected = [
        repr(result)
        for result in results
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError)
    ]
    # A completed unit wrote both its rows; a cancelled one wrote both or neither.
    halves = await scalar(
        private_db.dsn,
        "SELECT count(*) FROM tutorials t WHERE t.name NOT LIKE '% second' AND NOT EXISTS "
        "(SELECT 1 FROM tutorials s WHERE s.name = t.name || ' second')",
    )
    present = await scalar(
        private_db.dsn, "SELECT count(*) FROM tutorials WHERE name = ANY($1::text[])", completed
    )
    figures(
        face=f"library ({path})",
        fault="task cancellation",
        sent=len(tasks),
        faults_injected=cancelled,
        completed=len(completed),
        rows_found=f"{present}/{len(completed)}",
        connections_in_use_after=in_use,
        idle_after=idle,
        open_transactions_after=leaked_transactions,
        half_written_units=halves,
    )
    assert cancelled > 0
    assert unexpected == []
    assert in_use == 0
    assert leaked_transactions == 0
    assert busy == []
    assert present == len(completed)
    assert halves == 0
