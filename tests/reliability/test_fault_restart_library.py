"""Server restarts and crashes under write load, seen from the unit of work (no HTTP).

The module's private cluster is restarted and crashed in turn (each test on a database of its
own); each fault ends with the server accepting connections again.

The promise: a unit of work that returned was committed and survives; one that failed failed
as `Unavailable` (what the faces turn into 503 / exit 5), never as an unclassified error; and
the same `Database` serves again as soon as the server accepts connections. The writers are
the library face's own path: `service.create`, one INSERT in autocommit on asyncpg's pool, with
32 writers on a pool of 10 (so most of them also queue for a connection during the fault).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from tests.clusters import quiet_settings
from tests.reliability.harness import Figures, Outcomes, PrivateDb, Prober, ms, scalar

from tutorials import service
from tutorials.db.session import Database
from tutorials.errors import Unavailable
from tutorials.schemas import TutorialCreate

CLIENTS = 32
MAX_PER_CLIENT = 400
LOAD_BEFORE = 0.8
LOAD_AFTER = 1.5
HARD_DEADLINE = 30.0


async def _drive(
    db: PrivateDb, inject: Callable[[], Awaitable[object]], figures: Figures, fault: str
) -> None:
    database = Database.from_url(
        db.url,
        quiet_settings(pool_size=10, pool_timeout=3, connect_timeout=2),
    )
    outcomes = Outcomes()
    stop = asyncio.Event()
    deadline = time.monotonic() + HARD_DEADLINE
    prober = Prober(db.dsn)

    async def client(index: int) -> None:
        for number in range(MAX_PER_CLIENT):
            if stop.is_set() or time.monotonic() > deadline:
                return
            name = f"lib-{index}-{number}"
            outcomes.sent += 1
            try:
                await service.create(database, TutorialCreate(name=name))
            except Unavailable:
                outcomes.honest_failure()
                await asyncio.sleep(0.01)
            except Exception as exc:
                outcomes.bad_answer(f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.01)
            else:
                outcomes.success(name)

    prober_stop = asyncio.Event()
    probe = asyncio.create_task(prober.run(prober_stop, deadline))
    clients = [asyncio.create_task(client(index)) for index in range(CLIENTS)]
    try:
        await asyncio.sleep(LOAD_BEFORE)
        fault_at = time.monotonic()
        await inject()
        # Let the load run on until the server is back and for a while after.
        await prober.wait_back(fault_at, deadline - time.monotonic())
        await asyncio.sleep(LOAD_AFTER)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        prober_stop.set()
        await probe
    opened, idle, _ = database.pool_stats()
    checked_out = opened - idle
    await database.dispose()

    found = await scalar(
        db.dsn,
        "SELECT count(*) FROM tutorials WHERE name = ANY($1::text[])",
        sorted(outcomes.acknowledged),
    )
    total = await scalar(db.dsn, "SELECT count(*) FROM tutorials")
    assert isinstance(total, int)
    ready = prober.ready_after(fault_at)
    first_ok = outcomes.first_success_after(ready) if ready is not None else None
    recovery = None if ready is None or first_ok is None else max(0.0, first_ok - ready)
    figures(
        face="library",
        fault=fault,
        clients=CLIENTS,
        sent=outcomes.sent,
        faults_injected=1,
        acknowledged=outcomes.ok,
        unavailable=outcomes.unavailable,
        bad=len(outcomes.bad),
        rows_found=f"{found}/{len(outcomes.acknowledged)}",
        rows_in_doubt=total - outcomes.ok,
        server_down_ms=ms(ready - prober.down_at[0] if ready and prober.down_at else None),
        recovery_ms=ms(recovery),
    )
    assert ready is not None, "the server never came back"
    assert prober.down_at, "the fault did not take the server down: nothing was tested"
    assert outcomes.bad == [], outcomes.bad[:5]
    # The load ran across the fault. A 503 is not required: on a busy machine a crash restart
    # can end between two requests, and the pool's ping after idle replaces the dead
    # connections before any write uses them, as designed (the figures say how many saw one).
    assert any(t < prober.down_at[0] for t in outcomes.success_times), "no write before the fault"
    assert found == len(outcomes.acknowledged) == outcomes.ok
    # In doubt = committed but the answer was lost with the connection; never the reverse.
    assert total >= outcomes.ok
    assert checked_out == 0, "a connection leaked during the fault"
    assert first_ok is not None, "no unit of work succeeded after the server came back"
    assert recovery is not None and recovery <= 1.0, f"recovered after {recovery:.3f} s"


@pytest.mark.slow
async def test_fast_restart_under_write_load(private_db: PrivateDb, figures: Figures) -> None:
    await _drive(private_db, lambda: asyncio.to_thread(private_db.cluster.restart, "fast"), figures,
                 "pg_ctl restart -m fast")  # fmt: skip


@pytest.mark.slow
async def test_backend_kill_9_under_write_load(private_db: PrivateDb, figures: Figures) -> None:
    async def kill() -> None:
        pid = await private_db.cluster.kill_a_backend(private_db.name)
        assert pid is not None, "no backend to kill"

    await _drive(private_db, kill, figures, "kill -9 of a backend (crash recovery)")


async def test_idle_pool_after_restart_fails_nothing(
    private_db: PrivateDb, figures: Figures
) -> None:
    """Connections that died with the server are replaced, not handed out."""
    database = Database.from_url(private_db.url, quiet_settings(pool_size=8))
    try:
        # Fill the pool: 8 connections used at once, then all idle.
        await asyncio.gather(
            *(database.read(lambda c: c.execute("SELECT pg_sleep(0.05)")) for _ in range(8))
        )
        _, idle_before, _ = database.pool_stats()
        await asyncio.to_thread(private_db.cluster.restart, "fast")
        failures: list[str] = []
        for index in range(16):
            try:
                await service.create(database, TutorialCreate(name=f"after {index}"))
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
        figures(
            face="library",
            fault="pg_ctl restart -m fast with an idle pool",
            idle_connections=idle_before,
            sent=16,
            faults_injected=1,
            failed=len(failures),
        )
        assert idle_before == 8
        assert failures == []
        assert await scalar(private_db.dsn, "SELECT count(*) FROM tutorials") == 16
    finally:
        await database.dispose()
