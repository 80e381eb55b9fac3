"""A dead network (packets dropped, not refused), seen from the unit of work.

Without a deadline of our own, a request on a pooled connection whose packets vanish waits for
the operating system's TCP retransmission timeout (about 15 minutes on Linux). The promise is
an `Unavailable` within the configured deadline (connect timeout for new connections, statement
timeout for work on open ones) and service again once the network returns. The units of work
are the library face's: `service.create` (one INSERT in autocommit) and a `Database.transaction`,
on asyncpg's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from tests.clusters import quiet_settings
from tests.reliability.harness import Figures, PrivateDb, dropped_packets, ms, scalar

from tutorials import repository, service
from tutorials.db.database import Connection
from tutorials.db.session import Database
from tutorials.errors import Unavailable
from tutorials.schemas import TutorialCreate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_iptables")]

CONNECT_TIMEOUT = 0.5
STATEMENT_TIMEOUT_MS = 500
#: The longest a failing request may take: a connect, then a statement and its rollback, each
#: within its configured deadline (a client-side deadline may add up to 1 s of margin to the
#: server's statement timeout); plus 1 s of slack for a busy 2-core box.
DEADLINE = CONNECT_TIMEOUT + 2 * (STATEMENT_TIMEOUT_MS / 1000 + 1.0) + 1.0
#: Past the deadline but far below the OS's TCP timeout: a hang fails the test, not CI.
HANG = DEADLINE + 1.5
REQUESTS = 8


def _database(db: PrivateDb) -> Database:
    return Database.from_url(
        db.url,
        quiet_settings(
            pool_size=REQUESTS,  # every request holds a connection: none waits for one
            pool_timeout=2,
            connect_timeout=CONNECT_TIMEOUT,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        ),
    )


async def _timed_failures(database: Database) -> tuple[list[float], list[str]]:
    """Run REQUESTS units of work at once; how long each took to fail, and any wrong outcomes."""
    durations: list[float] = []
    wrong: list[str] = []

    async def one(index: int) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(HANG):
                await service.create(database, TutorialCreate(name=f"dead {index}"))
        except Unavailable:
            durations.append(time.monotonic() - started)
        except TimeoutError:
            wrong.append(f"hung for more than {HANG:.0f} s")
        except Exception as exc:
            wrong.append(f"{type(exc).__name__}: {exc}"[:200])
        else:
            wrong.append("succeeded through a dead network")

    await asyncio.gather(*(one(index) for index in range(REQUESTS)))
    return durations, wrong


async def _recovers(database: Database, deadline: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        try:
            async with asyncio.timeout(5):
                await service.create(database, TutorialCreate(name="network back"))
            return time.monotonic() - started
        except (Unavailable, TimeoutError):
            await asyncio.sleep(0.05)
    return None


async def test_dead_network_with_a_warm_pool(private_db: PrivateDb, figures: Figures) -> None:
    database = _database(private_db)
    try:
        # Open every connection of the pool, then leave them idle.
        await asyncio.gather(
            *(database.read(lambda c: c.execute("SELECT pg_sleep(0.05)")) for _ in range(REQUESTS))
        )
        warm = database.pool_stats()
        with dropped_packets(private_db.cluster.port):
            durations, wrong = await _timed_failures(database)
        recovery = await _recovers(database, 15)
        opened, idle, _ = database.pool_stats()
        checked_out = opened - idle
    finally:
        await database.dispose()
    figures(
        face="library",
        fault="iptables DROP, pooled connections open",
        sent=REQUESTS,
        faults_injected=1,
        unavailable=len(durations),
        wrong=len(wrong),
        max_failure_ms=ms(max(durations, default=None)),
        deadline_ms=ms(DEADLINE),
        recovery_ms=ms(recovery),
    )
    assert warm == (REQUESTS, REQUESTS, REQUESTS)
    assert wrong == [], wrong[:3]
    assert max(durations) <= DEADLINE
    assert recovery is not None, "no success after the network came back"
    assert checked_out == 0
    assert await scalar(
        private_db.dsn, "SELECT count(*) FROM tutorials WHERE name = 'network back'"
    )


async def test_dead_network_with_an_empty_pool(private_db: PrivateDb, figures: Figures) -> None:
    database = _database(private_db)
    try:
        with dropped_packets(private_db.cluster.port):
            durations, wrong = await _timed_failures(database)
        recovery = await _recovers(database, 15)
    finally:
        await database.dispose()
    figures(
        face="library",
        fault="iptables DROP, new connections",
        sent=REQUESTS,
        faults_injected=1,
        unavailable=len(durations),
        wrong=len(wrong),
        max_failure_ms=ms(max(durations, default=None)),
        deadline_ms=ms(DEADLINE),
        recovery_ms=ms(recovery),
    )
    assert wrong == [], wrong[:3]
    assert max(durations) <= DEADLINE
    assert recovery is not None


async def test_dead_network_in_the_middle_of_a_transaction(
    private_db: PrivateDb, figures: Figures
) -> None:
    database = _database(private_db)
    in_transaction = asyncio.Event()
    network_dead = asyncio.Event()
    outcome: list[str] = []

    async def work(connection: Connection) -> None:
        await connection.execute("SELECT 1")
        in_transaction.set()
        await network_dead.wait()
        await repository.insert(connection, "lost in transit", None, None, [])

    async def unit() -> float:
        started = time.monotonic()
        try:
            async with asyncio.timeout(HANG):
                await database.transaction(work)
            outcome.append("succeeded through a dead network")
        except Unavailable:
            outcome.append("unavailable")
        except TimeoutError:
            outcome.append(f"hung for more than {HANG:.0f} s")
        except Exception as exc:
            outcome.append(f"{type(exc).__name__}: {exc}"[:200])
        return time.monotonic() - started

    try:
        task = asyncio.create_task(unit())
        await asyncio.wait_for(in_transaction.wait(), 10)
        with dropped_packets(private_db.cluster.port):
            fault_at = time.monotonic()
            network_dead.set()
            await task
            failed_after = time.monotonic() - fault_at
        recovery = await _recovers(database, 15)
    finally:
        await database.dispose()
    figures(
        face="library",
        fault="iptables DROP inside an open transaction",
        sent=1,
        faults_injected=1,
        outcome=outcome[0],
        failure_ms=ms(failed_after),
        deadline_ms=ms(DEADLINE),
        recovery_ms=ms(recovery),
    )
    assert outcome == ["unavailable"]
    assert failed_after <= DEADLINE
    assert recovery is not None
    assert (
        await scalar(
            private_db.dsn, "SELECT count(*) FROM tutorials WHERE name = 'lost in transit'"
        )
        == 0
    )


async def test_dead_network_while_the_pool_closes_a_connection_at_release(
    private_db: PrivateDb, figures: Figures
) -> None:
    """The unit of work succeeded, then the pool closes its connection at release (as it does
    after `max_queries`, or after `expire_connections`) with the network gone: the goodbye gets
    no answer. The release's bound (the connect timeout, `_release`) ends that wait, and the
    caller gets its result."""
    database = _database(private_db)
    cut = contextlib.ExitStack()
    try:
        await database.read(lambda connection: connection.fetchval("SELECT 1"))
        pool = database._primary.pool  # asyncpg's pool, told to close connections at release
        assert pool is not None

        async def work(connection: Connection) -> object:
            value = await connection.fetchval("SELECT 41 + 1")
            await pool.expire_connections()
            cut.enter_context(dropped_packets(private_db.cluster.port))
            return value

        started = time.monotonic()
        try:
            async with asyncio.timeout(HANG):
                value = await database.read(work)
        finally:
            returned_after = time.monotonic() - started
            cut.close()
        recovery = await _recovers(database, 15)
        opened, idle, _ = database.pool_stats()
    finally:
        await database.dispose()
    figures(
        face="library",
        fault="iptables DROP while the pool closes a connection at release",
        sent=1,
        faults_injected=1,
        returned_ms=ms(returned_after),
        deadline_ms=ms(DEADLINE),
        recovery_ms=ms(recovery),
    )
    assert value == 42
    assert returned_after <= DEADLINE
    assert recovery is not None
    assert opened == idle, "a connection was never given back"
