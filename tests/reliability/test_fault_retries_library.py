"""Serialization failures and deadlocks (40001 / 40P01): retried with backoff, then `Unavailable`.

Two kinds of evidence. Injected: a trigger makes the next N writes fail with the SQLSTATE,
raised by the server itself (`RAISE ... USING ERRCODE`), so the whole path (driver,
classification, retry) is real on both of `Database`'s paths (the service's units of work on
asyncpg's pool, and ORM sessions), and the number of attempts is counted on the server.
Natural: a real deadlock and a real write-skew under SERIALIZABLE, which PostgreSQL detects on
its own, in units of work of the service's path (`Database.transaction`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from tests.clusters import quiet_settings
from tests.reliability.harness import (
    Figures,
    PrivateDb,
    fault_attempts,
    install_fault_trigger,
    ms,
    plan_faults,
    scalar,
)

from tutorials import repository, service
from tutorials.db.database import Connection
from tutorials.db.session import Database
from tutorials.errors import RetryableConflict, Unavailable
from tutorials.schemas import TutorialCreate, TutorialRecord

ATTEMPTS = 3

#: How a tutorial is created on each path: the service (`Database.write`, asyncpg's pool) and
#: an ORM unit of work (`Database.run`, SQLAlchemy's engine).
CREATE: dict[str, Callable[[Database, str], Awaitable[TutorialRecord]]] = {
    "service": lambda database, name: service.create(database, TutorialCreate(name=name)),
    "orm session": lambda database, name: database.run(
        lambda session: repository.insert(session, name, None, None, [])
    ),
}


@pytest.mark.parametrize("path", sorted(CREATE))
@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_injected_conflicts_are_retried_then_unavailable(
    private_db: PrivateDb, figures: Figures, sqlstate: str, path: str
) -> None:
    await install_fault_trigger(private_db.dsn)
    database = Database.from_url(private_db.url, quiet_settings(retry_attempts=ATTEMPTS))
    create = CREATE[path]
    try:
        # One failure fewer than the attempts: the last try succeeds, the row is stored once.
        await plan_faults(private_db.dsn, sqlstate, ATTEMPTS - 1)
        started = time.monotonic()
        saved = await create(database, "persistent")
        retried_for = time.monotonic() - started
        attempts_ok = await fault_attempts(private_db.dsn)

        # As many failures as attempts: the caller gets a retryable Unavailable, nothing stored.
        await plan_faults(private_db.dsn, sqlstate, ATTEMPTS)
        with pytest.raises(RetryableConflict) as raised:
            await create(database, "given up")
        attempts_failed = await fault_attempts(private_db.dsn)
    finally:
        await database.dispose()
    stored = await scalar(
        private_db.dsn, "SELECT count(*) FROM tutorials WHERE name = 'persistent'"
    )
    given_up = await scalar(
        private_db.dsn, "SELECT count(*) FROM tutorials WHERE name = 'given up'"
    )
    figures(
        face=f"library ({path})",
        fault=f"injected SQLSTATE {sqlstate}",
        sent=2,
        faults_injected=2 * ATTEMPTS - 1,
        attempts_when_recovering=attempts_ok,
        attempts_when_giving_up=attempts_failed,
        retried_for_ms=ms(retried_for),
        rows_found=stored,
    )
    assert saved.name == "persistent"
    assert attempts_ok == ATTEMPTS
    assert attempts_failed == ATTEMPTS
    assert isinstance(raised.value, Unavailable)
    assert stored == 1
    assert given_up == 0


async def test_a_real_deadlock_is_retried_and_both_succeed(
    private_db: PrivateDb, figures: Figures
) -> None:
    database = Database.from_url(private_db.url, quiet_settings(retry_attempts=ATTEMPTS))
    first = await service.create(database, TutorialCreate(name="a"))
    second = await service.create(database, TutorialCreate(name="b"))
    both_locked_one = asyncio.Barrier(2)
    attempts = {"forward": 0, "backward": 0}

    def crossing(label: str, one: int, other: int) -> Callable[[Connection], Awaitable[None]]:
        async def work(connection: Connection) -> None:
            attempts[label] += 1
            await repository.update(connection, one, {"description": label})
            if attempts[label] == 1:  # only the first attempts meet; a retry runs alone
                async with asyncio.timeout(5):
                    await both_locked_one.wait()
            await repository.update(connection, other, {"description": label})

        return work

    try:
        async with asyncio.timeout(20):
            await asyncio.gather(
                database.transaction(crossing("forward", first.tutorial_id, second.tutorial_id)),
                database.transaction(crossing("backward", second.tutorial_id, first.tutorial_id)),
            )
    finally:
        await database.dispose()
    versions = await scalar(private_db.dsn, "SELECT sum(version) FROM tutorials")
    figures(
        face="library",
        fault="real deadlock (40P01)",
        sent=2,
        attempts=sum(attempts.values()),
        final_version_sum=versions,
    )
    assert sorted(attempts.values()) == [1, 2]  # one victim, retried once
    assert versions == 2 + 4  # each row updated twice, by committed units only


async def test_a_real_serialization_failure_is_retried(
    private_db: PrivateDb, figures: Figures
) -> None:
    """Write skew under SERIALIZABLE: each reads the count then inserts; one must retry."""
    database = Database.from_url(private_db.url, quiet_settings(retry_attempts=ATTEMPTS))
    both_read = asyncio.Barrier(2)
    attempts = {"left": 0, "right": 0}

    def skewed(label: str) -> Callable[[Connection], Awaitable[None]]:
        async def work(connection: Connection) -> None:
            attempts[label] += 1
            seen = await repository.count(connection)
            if attempts[label] == 1:
                async with asyncio.timeout(5):
                    await both_read.wait()
            await repository.insert(connection, f"{label} saw {seen}", None, None, [])

        return work

    try:
        async with asyncio.timeout(20):
            await asyncio.gather(
                database.transaction(skewed("left"), isolation="serializable"),
                database.transaction(skewed("right"), isolation="serializable"),
            )
    finally:
        await database.dispose()
    names = await scalar(private_db.dsn, "SELECT array_agg(name ORDER BY name) FROM tutorials")
    figures(
        face="library",
        fault="real serialization failure (40001)",
        sent=2,
        attempts=sum(attempts.values()),
        rows=names,
    )
    assert sorted(attempts.values()) == [1, 2]
    # The retried one saw the other's row: the result is as if they ran one after the other.
    assert isinstance(names, list) and sorted(name.split()[-1] for name in names) == ["0", "1"]
