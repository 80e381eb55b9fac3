"""Deadlines on the server: a statement past `statement_timeout`, a lock past `lock_timeout`.

The server cancels the statement (so it stops costing anything there), the unit of work
answers `Timeout` (an `Unavailable`: 503 over HTTP, exit 5 on the command line), and the
connection goes back to the pool clean.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool
from tests.reliability.harness import (
    Figures,
    PrivateDb,
    ms,
    open_transactions,
    quiet_settings,
    sessions_of,
)

from tutorials import repository
from tutorials.db.session import Database
from tutorials.errors import Timeout

STATEMENT_TIMEOUT_MS = 300


async def test_statement_over_the_deadline_is_cancelled_server_side(
    private_db: PrivateDb, figures: Figures
) -> None:
    app_name = "rel-statement-timeout"
    database = Database.from_url(
        private_db.url,
        quiet_settings(statement_timeout_ms=STATEMENT_TIMEOUT_MS, application_name=app_name),
    )

    async def slow(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(30)"))

    try:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            async with asyncio.timeout(10):
                await database.run(slow)
        except Timeout as exc:
            error = exc
        elapsed = time.monotonic() - started
        sleeping = [
            row
            for row in await sessions_of(private_db.dsn, app_name)
            if "pg_sleep" in str(row["query"]) and row["state"] == "active"
        ]
        pool = database.engine.pool
        assert isinstance(pool, QueuePool)
        in_use = pool.checkedout()
        # The same pool serves the next unit of work.
        await database.run(repository.count)
    finally:
        await database.dispose()
    figures(
        face="library",
        fault="statement_timeout",
        sent=1,
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        failed_after_ms=ms(elapsed),
        still_running_server_side=len(sleeping),
    )
    assert isinstance(error, Timeout)
    assert elapsed < 10
    assert sleeping == []
    assert in_use == 0


async def test_waiting_on_a_lock_past_the_deadline_is_a_timeout(
    private_db: PrivateDb, figures: Figures
) -> None:
    """A write blocked behind another session's lock: `lock_timeout` ends it, nothing stays."""
    app_name = "rel-lock-timeout"
    database = Database.from_url(
        private_db.url,
        quiet_settings(lock_timeout_ms=200, application_name=app_name),
    )
    saved = await database.run(lambda s: repository.add(s, {"name": "locked"}))
    blocker = await asyncpg.connect(private_db.dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(
            "SELECT 1 FROM tutorials WHERE tutorial_id = $1 FOR UPDATE", saved.tutorial_id
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):
                await database.run(
                    lambda s: repository.update(s, saved.tutorial_id, {"name": "changed"})
                )
            error: BaseException | None = None
        except Timeout as exc:
            error = exc
        elapsed = time.monotonic() - started
        await transaction.rollback()
        leaked = await open_transactions(private_db.dsn, app_name)
    finally:
        await blocker.close()
        await database.dispose()
    figures(
        face="library",
        fault="lock_timeout",
        sent=1,
        failed_after_ms=ms(elapsed),
        open_transactions_after=leaked,
    )
    assert isinstance(error, Timeout)
    assert leaked == 0
