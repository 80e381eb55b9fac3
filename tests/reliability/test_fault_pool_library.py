"""Pool exhaustion and cancellation, seen from the unit of work.

More concurrent slow units of work than connections: the excess fails fast as `Unavailable`
after the short pool wait, nothing hangs, and the pool returns to its idle size. Tasks
cancelled at any point (waiting for a connection, mid-statement, at commit) leak neither a
connection nor an open transaction.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool
from tests.reliability.harness import (
    Figures,
    PrivateDb,
    ms,
    open_transactions,
    quiet_settings,
    scalar,
    sessions_of,
)

from tutorials import repository
from tutorials.db.session import Database
from tutorials.errors import Unavailable

POOL_SIZE = 2
POOL_TIMEOUT = 0.3
SLOW = 1.5
REQUESTS = 8


def _pool(database: Database) -> QueuePool:
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    return pool


async def test_exhausted_pool_fails_fast_and_recovers(
    private_db: PrivateDb, figures: Figures
) -> None:
    app_name = "rel-exhaustion"
    database = Database.from_url(
        private_db.url,
        quiet_settings(
            pool_size=POOL_SIZE,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
            application_name=app_name,
        ),
    )
    outcomes: list[tuple[str, float]] = []

    async def slow(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": SLOW})

    async def one() -> None:
        started = time.monotonic()
        try:
            await database.run(slow)
            outcomes.append(("ok", time.monotonic() - started))
        except Unavailable:
            outcomes.append(("unavailable", time.monotonic() - started))
        except Exception as exc:
            outcomes.append((f"{type(exc).__name__}: {exc}"[:200], time.monotonic() - started))

    try:
        async with asyncio.timeout(SLOW * 4 + 5):  # nothing hangs
            await asyncio.gather(*(one() for _ in range(REQUESTS)))
        pool = _pool(database)
        in_use, idle = pool.checkedout(), pool.checkedin()
        server_side = await sessions_of(private_db.dsn, app_name)
        # And the pool serves again at once.
        await database.run(repository.count)
    finally:
        await database.dispose()
    kinds = [kind for kind, _ in outcomes]
    refused = [seconds for kind, seconds in outcomes if kind == "unavailable"]
    figures(
        face="library",
        fault="pool exhaustion",
        pool_size=POOL_SIZE,
        sent=REQUESTS,
        ok=kinds.count("ok"),
        unavailable=len(refused),
        max_refusal_ms=ms(max(refused, default=None)),
        pool_timeout_ms=ms(POOL_TIMEOUT),
        idle_after=idle,
    )
    assert sorted(kinds) == ["ok"] * POOL_SIZE + ["unavailable"] * (REQUESTS - POOL_SIZE)
    # Refused after the short pool wait, long before a slow request would have freed one.
    assert max(refused) < SLOW
    assert in_use == 0
    assert idle == POOL_SIZE
    assert len(server_side) == POOL_SIZE
    assert all(row["state"] == "idle" for row in server_side), server_side


@pytest.mark.slow
async def test_cancelled_units_of_work_leak_nothing(
    private_db: PrivateDb, figures: Figures
) -> None:
    """Cancel 64 tasks at random moments: before, during and after their statements."""
    app_name = "rel-cancel"
    database = Database.from_url(
        private_db.url,
        quiet_settings(pool_size=4, max_overflow=4, pool_timeout=5, application_name=app_name),
    )
    rng = random.Random(6)
    completed: list[str] = []

    async def work(session: AsyncSession, name: str, pause: float) -> None:
        await repository.add(session, {"name": name})
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": pause})
        await repository.add(session, {"name": name + " second"})

    async def one(index: int) -> None:
        name = f"cancel {index}"
        pause = rng.choice([0.0, 0.01, 0.05, 0.2])
        await database.run(lambda session: work(session, name, pause))
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
        pool = _pool(database)
        in_use, idle = pool.checkedout(), pool.checkedin()
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
        face="library",
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
