"""Deadlines on the server: a statement past `statement_timeout`, a lock past `lock_timeout`.

The server cancels the statement (so it stops costing anything there), the unit of work
answers `Timeout` (an `Unavailable`: 503 over HTTP, exit 5 on the command line), and the
connection goes back to the pool clean. Both of `Database`'s paths carry the deadlines: the
service's units of work (asyncpg's pool) and ORM sessions (SQLAlchemy's engine).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from sqlalchemy import text
from tests.clusters import quiet_settings
from tests.reliability.harness import Figures, PrivateDb, ms, open_transactions, sessions_of

from tutorials import repository, service
from tutorials.db.session import Database
from tutorials.errors import Timeout
from tutorials.schemas import TutorialCreate, TutorialPatch

STATEMENT_TIMEOUT_MS = 300


async def _sleep(database: Database, path: str, seconds: float) -> None:
    """A statement that takes `seconds` on the server, as a unit of work of `path`."""
    if path == "service":
        await database.read(lambda connection: connection.execute(f"SELECT pg_sleep({seconds})"))
    else:
        await database.run(lambda session: session.execute(text(f"SELECT pg_sleep({seconds})")))


@pytest.mark.parametrize("path", ["service", "orm session"])
async def test_statement_over_the_deadline_is_cancelled_server_side(
    private_db: PrivateDb, figures: Figures, path: str
) -> None:
    app_name = "rel-statement-timeout"
    database = Database.from_url(
        private_db.url,
        quiet_settings(statement_timeout_ms=STATEMENT_TIMEOUT_MS, application_name=app_name),
    )

    try:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            async with asyncio.timeout(10):
                await _sleep(database, path, 30)
        except Timeout as exc:
            error = exc
        elapsed = time.monotonic() - started
        sessions = await sessions_of(private_db.dsn, app_name)
        sleeping = [
            row for row in sessions if "pg_sleep" in str(row["query"]) and row["state"] == "active"
        ]
        busy = [row for row in sessions if row["state"] != "idle"]
        opened, idle, _ = database.pool_stats()
        # The same Database serves the next unit of work, on either path.
        assert await service.count(database) == 0
        assert await database.run(repository.count) == 0
    finally:
        await database.dispose()
    figures(
        face=f"library ({path})",
        fault="statement_timeout",
        sent=1,
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        failed_after_ms=ms(elapsed),
        still_running_server_side=len(sleeping),
    )
    assert isinstance(error, Timeout)
    assert elapsed < 10
    assert sleeping == []
    assert busy == []  # every connection of either pool is back, idle, out of any transaction
    assert opened == idle


async def test_waiting_on_a_lock_past_the_deadline_is_a_timeout(
    private_db: PrivateDb, figures: Figures
) -> None:
    """A write blocked behind another session's lock: `lock_timeout` ends it, nothing stays."""
    app_name = "rel-lock-timeout"
    database = Database.from_url(
        private_db.url,
        quiet_settings(lock_timeout_ms=200, application_name=app_name),
    )
    saved = await service.create(database, TutorialCreate(name="locked"))
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
                await service.update(database, saved.tutorial_id, TutorialPatch(name="changed"))
            error: BaseException | None = None
        except Timeout as exc:
            error = exc
        elapsed = time.monotonic() - started
        await transaction.rollback()
        leaked = await open_transactions(private_db.dsn, app_name)
        opened, idle, _ = database.pool_stats()
        stored = await service.get(database, saved.tutorial_id)
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
    assert elapsed < 5  # the lock timeout (0.2 s), far below the statement timeout (15 s)
    assert leaked == 0
    assert opened == idle
    assert (stored.name, stored.version) == ("locked", 1)
