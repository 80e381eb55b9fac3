"""The connection budget across processes, checked at start-up against the server's limits."""

from __future__ import annotations

import logging

import asyncpg
import pytest
from sqlalchemy.engine import URL

from tutorials.api.app import open_database
from tutorials.db.budget import ServerLimits, check_budget, verdict
from tutorials.db.database import Database
from tutorials.settings import Settings


async def _limits(dsn: str) -> ServerLimits:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "coalesce(current_setting('reserved_connections', true), '0')::int"
        )
    finally:
        await connection.close()
    assert row is not None
    return ServerLimits(*row)


async def test_one_process_fits(database: Database) -> None:
    assert await check_budget(database) == []


async def test_too_many_workers_are_warned_about_with_the_pool_size_that_fits(
    database_url: URL, settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    if settings.pgbouncer:
        pytest.skip("behind PgBouncer the budget is PgBouncer's")
    limits = await _limits(dsn)
    room = limits.max_connections - limits.superuser_reserved - limits.reserved - 5
    workers = room // 25 + 1  # one more than fits at 20 + 5 per process
    crowded = settings.model_copy(update={"workers": workers})
    database = Database.from_url(database_url, crowded)
    try:
        with caplog.at_level(logging.WARNING, logger="tutorials.db"):
            (warning,) = await check_budget(database)
    finally:
        await database.dispose()
    fits = room // workers - 5
    assert warning == (
        f"connection budget exceeded on the primary: {workers} worker(s) x 25 connections = "
        f"{workers * 25}, but max_connections {limits.max_connections} - "
        f"{limits.superuser_reserved} reserved for superusers - {limits.reserved} reserved - "
        f"5 kept free (TUTORIALS_CONNECTION_RESERVE) leaves {room}; lower TUTORIALS_POOL_SIZE "
        f"to {fits}, raise max_connections, or put PgBouncer in front (docs/SCALING.md)"
    )
    assert [record.getMessage() for record in caplog.records] == [warning]


async def test_the_service_warns_at_start_up(
    database_url: URL, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    if settings.pgbouncer:
        pytest.skip("behind PgBouncer the budget is PgBouncer's")
    crowded = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url.render_as_string(hide_password=False),
        auto_migrate=False,
        workers=1000,
    )
    with caplog.at_level(logging.WARNING, logger="tutorials.db"):
        database = await open_database(crowded)
    await database.dispose()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("connection budget exceeded on the primary: 1000 worker(s)")
    assert messages[0].endswith(
        "run fewer workers per server, raise max_connections, or put PgBouncer in front "
        "(docs/SCALING.md)"
    )


def test_a_replica_is_counted_with_its_own_pool_and_poll() -> None:
    settings = Settings(_env_file=None, workers=4, replica_pool_size=30)  # type: ignore[call-arg]
    limits = ServerLimits(max_connections=100, superuser_reserved=3, reserved=2)
    assert verdict("replica 1", settings, limits, 31, "TUTORIALS_REPLICA_POOL_SIZE", 30) == (
        "connection budget exceeded on the replica 1: 4 worker(s) x 31 connections = 124, "
        "but max_connections 100 - 3 reserved for superusers - 2 reserved - 5 kept free "
        "(TUTORIALS_CONNECTION_RESERVE) leaves 90; lower TUTORIALS_REPLICA_POOL_SIZE to 21, "
        "raise max_connections, or put PgBouncer in front (docs/SCALING.md)"
    )
    assert verdict("replica 1", settings, limits, 22, "TUTORIALS_REPLICA_POOL_SIZE", 21) is None
