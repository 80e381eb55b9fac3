"""The service through a real PgBouncer in transaction mode (Debian's package).

PgBouncer in transaction mode hands a server connection to a client for one transaction, then
to another client: session state does not survive, named prepared statements collide, and it
refuses startup parameters other than a few (`application_name`). So in `pgbouncer` mode the
service uses unnamed statements, sends only `application_name`, begins its transactions with
`SET LOCAL` of the timeouts (folded into the BEGIN), and checks at start-up that the role's or
database's defaults cover its single statements. Without that mode it cannot even connect
through PgBouncer, which is the first test. The last one runs `tutorials serve` through it
under 32 concurrent clients.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL
from tests.pgbouncer.conftest import SERVER_POOL
from tests.pgbouncer.harness import PgBouncer
from tests.support import admin_execute, client_limits

from tutorials import service
from tutorials.db.budget import check_timeouts
from tutorials.db.database import Connection, Database
from tutorials.errors import Timeout, Unavailable
from tutorials.schemas import TutorialPatch
from tutorials.settings import Settings

TIMEOUTS = (
    "SELECT setting FROM pg_settings WHERE name IN "
    "('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout') ORDER BY name"
)


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"auto_migrate": False, "pgbouncer": True}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def bounced(bounced_url: URL) -> AsyncIterator[Database]:
    database = Database.from_url(bounced_url, _settings())
    yield database
    await database.dispose()


async def test_without_pgbouncer_mode_pgbouncer_refuses_the_connection(bounced_url: URL) -> None:
    database = Database.from_url(bounced_url, _settings(pgbouncer=False))
    try:
        with pytest.raises(Unavailable):  # "unsupported startup parameter: statement_timeout"
            await database.read(lambda c: c.fetchval("SELECT 1"))
    finally:
        await database.dispose()


async def test_every_unit_of_work_runs_through_pgbouncer(bounced: Database) -> None:
    """64 tasks on a pool of 20 over 6 server connections: every shape, no prepared statement
    left on a server connection for another client to trip on."""

    async def one(index: int) -> None:
        created = await service.create(bounced, service.new_tutorial({"name": f"t {index}"}))
        await service.update(bounced, created.tutorial_id, TutorialPatch(description="d"))
        assert (await service.get(bounced, created.tutorial_id)).description == "d"
        await service.list_page(bounced, limit=5)
        await service.search(bounced, "t")  # a read-only transaction
        await bounced.transaction(lambda c: c.fetchval("SELECT count(*) FROM tutorials"))

    await asyncio.gather(*(one(index) for index in range(64)))
    assert await service.count(bounced) == 64
    named = await bounced.read(lambda c: c.fetchval("SELECT count(*) FROM pg_prepared_statements"))
    assert named == 0


async def test_transactions_carry_the_settings_timeouts_single_statements_the_servers(
    bounced_url: URL,
) -> None:
    settings = _settings(statement_timeout_ms=7000, lock_timeout_ms=300)
    database = Database.from_url(bounced_url, settings)
    try:
        inside = await database.transaction(lambda c: c.fetch(TIMEOUTS))
        alone = await database.read(lambda c: c.fetch(TIMEOUTS))
        # The session is unchanged after the transaction: SET LOCAL ended with it.
        after = await database.read(lambda c: c.fetch(TIMEOUTS))
    finally:
        await database.dispose()
    # idle_in_transaction_session_timeout, lock_timeout, statement_timeout
    assert [row[0] for row in inside] == ["60000", "300", "7000"]
    assert [row[0] for row in alone] == [row[0] for row in after] != ["60000", "300", "7000"]


@pytest.mark.parametrize("unit", ["transaction", "write"])
async def test_a_write_stuck_behind_a_lock_gives_up_on_the_server_and_changes_nothing(
    bounced_url: URL, dsn: str, unit: str
) -> None:
    """A transaction carries the settings' lock_timeout in its BEGIN; so does a single-statement
    write while the server's defaults are not known to agree. Either fails on the server at
    200 ms, so nothing is applied once the lock goes (waiting for the client-side deadline
    instead, the server could still apply it after the caller was told it failed)."""
    database = Database.from_url(bounced_url, _settings(lock_timeout_ms=200))
    assert not database.statement_timeouts_hold
    blocker = await asyncpg.connect(dsn)
    try:
        await blocker.execute("INSERT INTO tutorials (name) VALUES ('held')")
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE tutorials IN ACCESS EXCLUSIVE MODE")

        async def update(connection: Connection) -> object:
            return await connection.execute("UPDATE tutorials SET name = 'changed'")

        run = database.transaction if unit == "transaction" else database.write
        started = time.monotonic()
        with pytest.raises(Timeout):
            await run(update)
        waited = time.monotonic() - started
        await transaction.rollback()
        names = await blocker.fetch("SELECT name FROM tutorials")
    finally:
        await blocker.close()
        await database.dispose()
    assert 0.2 <= waited < 2.0
    assert [row["name"] for row in names] == ["held"]


async def test_start_up_names_the_statements_that_make_the_server_defaults_agree(
    pgbouncer: PgBouncer, server_url: URL, template_name: str
) -> None:
    """Without role defaults, a warning with the exact statements; once they are run (before
    PgBouncer opens server connections to the database), no warning."""
    names = [f"tutorials_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for name in names:
        await admin_execute(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    try:
        database = Database.from_url(pgbouncer.url(names[0]), _settings())
        try:
            (warning,) = await check_timeouts(database)
            assert not database.statement_timeouts_hold  # writes carry the timeouts
        finally:
            await database.dispose()
        user = server_url.username
        fix = (
            f'ALTER ROLE "{user}" IN DATABASE "{names[0]}" SET statement_timeout = 15000; '
            f'ALTER ROLE "{user}" IN DATABASE "{names[0]}" SET lock_timeout = 5000; '
            f'ALTER ROLE "{user}" IN DATABASE "{names[0]}" SET '
            "idle_in_transaction_session_timeout = 60000;"
        )
        assert warning.endswith(f"to make them agree run: {fix}")
        statements = fix.replace(names[0], names[1]).split("; ")
        await admin_execute(server_url, *statements)
        database = Database.from_url(pgbouncer.url(names[1]), _settings())
        try:
            assert await check_timeouts(database) == []
            assert database.statement_timeouts_hold  # single statements may go alone
            values = await database.read(lambda c: c.fetch(TIMEOUTS))
        finally:
            await database.dispose()
        assert [row[0] for row in values] == ["60000", "5000", "15000"]
    finally:
        for name in names:
            await admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- 32 clients through `tutorials serve` ------------------------------------------------------

CLIENTS = 32
ITERATIONS = 8


@pytest.mark.slow
async def test_the_service_under_32_clients_through_pgbouncer(
    bounced_url: URL, dsn: str, tmp_path: Path
) -> None:
    from tests.serving import running_service, service_env

    env = service_env(
        bounced_url.render_as_string(hide_password=False),
        TUTORIALS_PGBOUNCER="true",
        TUTORIALS_POOL_SIZE="20",
        # What is tested is correctness through PgBouncer, not shedding load: on a loaded
        # 2-core machine a request may wait seconds for one of PgBouncer's 6 server
        # connections, which the default 2 s pool timeout would answer 503.
        TUTORIALS_POOL_TIMEOUT="60",
    )
    await asyncio.to_thread(tmp_path.chmod, 0o755)
    statuses: dict[str, list[int]] = {}
    latencies: list[float] = []
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        connection = await asyncpg.connect(dsn)
        try:
            while not stop.is_set():
                count = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
                peak = max(peak, int(count))
                await asyncio.sleep(0.02)
        finally:
            await connection.close()

    async with running_service(env, tmp_path) as running:
        limits = client_limits(CLIENTS)
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30, limits=limits) as http:

            async def call(kind: str, request: Any) -> httpx.Response:
                started = time.perf_counter()
                response: httpx.Response = await request
                latencies.append(time.perf_counter() - started)
                statuses.setdefault(kind, []).append(response.status_code)
                return response

            async def client(index: int) -> None:
                for number in range(ITERATIONS):
                    name = f"load {index} {number}"
                    created = await call("post", http.post("/tutorials", json={"name": name}))
                    if created.status_code != 201:
                        continue
                    location, etag = created.headers["location"], created.headers["etag"]
                    await call("get", http.get(location))
                    await call(
                        "patch",
                        http.patch(
                            location,
                            json={"description": "loaded"},
                            headers={
                                "content-type": "application/merge-patch+json",
                                "if-match": etag,
                            },
                        ),
                    )
                    await call("list", http.get("/tutorials", params={"limit": 10}))
                    await call("search", http.get("/tutorials", params={"q": "load"}))

            watcher = asyncio.create_task(watch())
            started = time.monotonic()
            try:
                await asyncio.gather(*(client(index) for index in range(CLIENTS)))
            finally:
                stop.set()
                await watcher
            elapsed = time.monotonic() - started
        errors = running.error_lines()
    stored = await _count(dsn, "SELECT count(*) FROM tutorials WHERE description = 'loaded'")
    total = sum(len(codes) for codes in statuses.values())
    print(
        f"\nthrough PgBouncer: {CLIENTS} clients, {total} requests in {elapsed:.1f} s "
        f"({total / elapsed:.0f}/s), p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {statistics.quantiles(latencies, n=100)[98] * 1000:.1f} ms, "
        f"peak server connections {peak} (PgBouncer's pool: {SERVER_POOL})"
    )
    expected = {"post": 201, "get": 200, "patch": 200, "list": 200, "search": 200}
    for kind, status in expected.items():
        assert set(statuses[kind]) == {status}, (kind, sorted(set(statuses[kind])))
    assert len(statuses["post"]) == CLIENTS * ITERATIONS
    assert stored == CLIENTS * ITERATIONS
    assert 0 < peak <= SERVER_POOL
    assert errors == []


async def _count(dsn: str, query: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval(query))
    finally:
        await connection.close()
