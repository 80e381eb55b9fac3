"""Connection defaults, and stale connections replaced at checkout, against real servers.

asyncpg's pool replaces a connection the server closed (a restart, `pg_terminate_backend`) at
checkout; `Database` pings one that sat idle long enough to have died without a word. These
tests restart a real PostgreSQL (a private embedded server in a temporary root) under an idle,
full pool and count failed operations afterwards: there must be none, on the service's path
and on the ORM path, for writes (which are never retried) as well as reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from tests.support import admin_execute, run_async

from tutorials import repository
from tutorials.db.database import Database
from tutorials.db.embedded import EmbeddedPostgres
from tutorials.db.engine import begin_statement, connect_options, local_timeouts, unit_deadline
from tutorials.db.migrate import upgrade
from tutorials.db.url import parse_database_url
from tutorials.errors import Unavailable
from tutorials.settings import Settings

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
async def private_url(private_server: EmbeddedPostgres) -> str:
    url = await asyncio.to_thread(private_server.start)
    database = Database.from_url(url, _settings())
    try:
        await upgrade(database.engine)
    finally:
        await database.dispose()
    return url


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"auto_migrate": False, "pool_size": POOL, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _database(url: str | URL, **overrides: object) -> AsyncIterator[Database]:
    database = Database.from_url(url, _settings(**overrides))
    try:
        yield database
    finally:
        await database.dispose()


async def _pid(connection: Any) -> int:
    return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def _backend_pids(database: Database, count: int = POOL) -> set[int]:
    """Hold `count` pooled connections at once (so that many exist); their backend pids."""

    async def pid(connection: Any) -> int:
        await connection.execute("SELECT pg_sleep(0.05)")
        return await _pid(connection)

    return set(await asyncio.gather(*(database.read(pid) for _ in range(count))))


async def _mixed_operations(database: Database, count: int) -> int:
    """Writes and reads on both paths, concurrently; how many failed."""

    async def one(index: int) -> None:
        saved = await database.write(
            lambda c: repository.insert(c, f"after {index}", None, None, [])
        )
        assert await database.read(lambda c: repository.get(c, saved.tutorial_id)) is not None
        async with database.session() as session:
            await repository.update(session, saved.tutorial_id, {"name": f"orm {index}"})

    outcomes = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    return sum(1 for outcome in outcomes if isinstance(outcome, BaseException))


async def test_an_idle_pool_survives_a_server_restart(
    private_server: EmbeddedPostgres, private_url: str
) -> None:
    async with _database(private_url) as database:
        before = await _backend_pids(database)
        assert len(before) == POOL
        async with database.session() as session:  # the ORM pool holds one too
            await session.execute(text("SELECT 1"))
        await asyncio.to_thread(private_server.stop)
        await asyncio.to_thread(private_server.start)
        assert await _mixed_operations(database, 3 * POOL) == 0
        after = await _backend_pids(database)
        assert after.isdisjoint(before)  # every dead connection was replaced, none reused


async def _kill_idle_connection_behind_a_blocked_loop(database: Database, url: str) -> None:
    """Terminate the pool's one connection while the event loop cannot notice (it is blocked),
    so the connection still looks open at the next checkout: a network path that died
    without a word looks the same."""
    (pid,) = await _backend_pids(database, 1)
    # Blocking on purpose, from another thread's loop: ours must not run until the next call.
    run_async(lambda: admin_execute(url, f"SELECT pg_terminate_backend({pid})"))
    time.sleep(0.3)  # noqa: ASYNC251 - the backend is gone, and our loop has not noticed


async def test_a_connection_idle_for_long_is_pinged_before_use(private_url: str) -> None:
    async with _database(private_url, pool_size=1) as database:
        database.ping_after_idle = 0.1
        await _kill_idle_connection_behind_a_blocked_loop(database, private_url)
        saved = await database.write(lambda c: repository.insert(c, "after", None, None, []))
        assert saved.tutorial_id >= 1


async def test_without_the_idle_ping_that_write_fails(private_url: str) -> None:
    """The control: the test above can fail."""
    async with _database(private_url, pool_size=1) as database:
        database.ping_after_idle = 3600.0
        await _kill_idle_connection_behind_a_blocked_loop(database, private_url)
        with pytest.raises(Unavailable):
            await database.write(lambda c: repository.insert(c, "lost", None, None, []))
        # ...and a read in the same situation is retried once on a fresh connection.
        await _kill_idle_connection_behind_a_blocked_loop(database, private_url)
        assert await database.read(repository.count) == 0


async def test_both_pools_carry_the_server_settings(database: Database) -> None:
    async def show(connection: Any) -> tuple[str, str, str, str]:
        row = await connection.fetchrow(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
            "current_setting('application_name'), current_setting('jit')"
        )
        return (row[0], row[1], row[2], row[3])

    expected = ("15s", "5s", "tutorials", "off")
    assert await database.read(show) == expected
    async with database.session() as session:
        row = (
            await session.execute(
                text(
                    "SELECT current_setting('statement_timeout'), "
                    "current_setting('lock_timeout'), current_setting('application_name'), "
                    "current_setting('jit')"
                )
            )
        ).one()
        assert tuple(row) == expected


async def test_release_sends_no_reset_round_trip(database_url: URL, settings: Settings) -> None:
    """asyncpg's default reset would `RESET ALL` on every release (a round trip); ours keeps
    the session as it is, so a session setting survives the next checkout of that connection."""
    database = Database.from_url(database_url, settings.model_copy(update={"pool_size": 1}))
    try:
        pid = await database.read(_pid)
        await database.read(lambda c: c.execute("SET search_path TO public, pg_catalog"))
        again = await database.read(
            lambda c: c.fetchrow("SELECT pg_backend_pid(), current_setting('search_path')")
        )
        assert tuple(again) == (pid, "public, pg_catalog")
    finally:
        await database.dispose()


async def test_a_transaction_left_open_is_rolled_back_on_release(
    database: Database, dsn: str
) -> None:
    async def leaves_open(connection: Any) -> int:
        await connection.execute("BEGIN")
        await repository.insert(connection, "never committed", None, None, [])
        return await _pid(connection)

    await database.write(leaves_open)
    assert await database.read(repository.count) == 0
    assert (
        await database.read(lambda c: c.fetchval("SELECT pg_current_xact_id_if_assigned()")) is None
    )


def test_behind_pgbouncer_only_application_name_and_unnamed_statements() -> None:
    url = parse_database_url("postgresql://u@h/db")
    plain = connect_options(url, Settings(_env_file=None))  # type: ignore[call-arg]
    assert plain["server_settings"]["statement_timeout"] == "15000"
    assert "statement_cache_size" not in plain
    bouncer = connect_options(url, Settings(_env_file=None, pgbouncer=True))  # type: ignore[call-arg]
    # PgBouncer passes application_name on and refuses every other startup parameter.
    assert bouncer["server_settings"] == {"application_name": "tutorials"}
    assert bouncer["statement_cache_size"] == 0
    assert bouncer["command_timeout"] == 16.0  # the client-side deadline still holds


def test_the_client_side_deadline_is_per_statement_except_on_the_services_pool() -> None:
    """The service's pool leaves it to `Database` (one deadline per unit of work); connections
    opened elsewhere (ORM sessions, start-up checks) keep asyncpg's per-statement one."""
    url = parse_database_url("postgresql://u@h/db")
    settings = Settings(_env_file=None, statement_timeout_ms=2000)  # type: ignore[call-arg]
    assert unit_deadline(settings) == 3.0
    assert connect_options(url, settings)["command_timeout"] == 3.0
    assert "command_timeout" not in connect_options(url, settings, per_statement_deadline=False)
    off = Settings(_env_file=None, statement_timeout_ms=0)  # type: ignore[call-arg]
    assert unit_deadline(off) is None
    assert "command_timeout" not in connect_options(url, off)


def test_behind_pgbouncer_transactions_begin_with_set_local_of_the_timeouts() -> None:
    settings = Settings(_env_file=None, pgbouncer=True, lock_timeout_ms=250)  # type: ignore[call-arg]
    local = local_timeouts(settings)
    assert begin_statement("repeatable_read", True, local) == (
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = 15000; "
        "SET LOCAL lock_timeout = 250; SET LOCAL idle_in_transaction_session_timeout = 60000"
    )
    assert begin_statement("read_committed", False, local).startswith(
        "BEGIN ISOLATION LEVEL READ COMMITTED; "
    )
    assert local_timeouts(Settings(_env_file=None)) == ""  # type: ignore[call-arg]


def test_what_the_url_says_wins() -> None:
    url = parse_database_url("postgresql://u@h/db?connect_timeout=7&command_timeout=3")
    options = connect_options(url, Settings(_env_file=None))  # type: ignore[call-arg]
    assert (options["timeout"], options["command_timeout"]) == (7.0, 3.0)
