"""Concurrent migrations: processes upgrading one empty database together all succeed, one applies.

Black-box through the command line on a cluster of the test's own that logs every DDL
statement, so "one applies" is read from the server's log, not from our own output: the table
is created exactly once. One process runs `tutorials db upgrade`, the other an ordinary command
with auto-migration on (what a service or library start does): both upgrade.

A race that depends on process start-up timing proves little, so the test makes it certain:
it holds the migration advisory lock itself until every process is waiting for it (a waiter
tries the lock and pauses in turn, each statement marked with `LOCK_WAIT_MARK`: seen in
`pg_stat_activity`), then lets them all go at once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from tests.clusters import PrivateCluster
from tests.reliability.harness import Figures, scalar
from tests.serving import service_env

from tutorials.db.migrate import LOCK_WAIT_MARK, MIGRATION_LOCK_KEY, head_revision

CLI = [sys.executable, "-c", "from tutorials.cli import main; main()"]


@pytest.mark.slow
async def test_concurrent_upgrades_all_succeed_and_one_applies(
    make_cluster: Callable[..., PrivateCluster], tmp_path: Path, figures: Figures
) -> None:
    cluster = make_cluster({"log_statement": "ddl"})
    name = cluster.create_database(migrate=False)
    dsn = cluster.dsn(name)
    env = service_env(cluster.url(name).render_as_string(hide_password=False))
    auto = {**env, "TUTORIALS_AUTO_MIGRATE": "true"}
    commands = [
        (env, [*CLI, "db", "upgrade"]),
        (auto, [*CLI, "list", "--json"]),
    ]
    gate = await asyncpg.connect(dsn)
    await gate.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    started = time.monotonic()
    processes = [
        await asyncio.create_subprocess_exec(
            *command,
            env=command_env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for command_env, command in commands
    ]
    queued = 0
    try:
        while time.monotonic() - started < 60 and queued < len(processes):
            if any(process.returncode is not None for process in processes):
                break  # one ended without waiting: the assertions below say why
            await asyncio.sleep(0.05)
            queued = await _waiting_for_the_migration_lock(dsn)
    finally:
        await gate.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        await gate.close()
    outputs = []
    for process in processes:
        try:
            async with asyncio.timeout(120):
                outputs.append(await process.communicate())
        except TimeoutError:
            process.kill()
            outputs.append(await process.communicate())
    elapsed = time.monotonic() - started
    codes = [process.returncode for process in processes]
    log = cluster.log_file.read_text(errors="replace")
    created = log.count("CREATE TABLE tutorials")
    version = await scalar(dsn, "SELECT version_num FROM alembic_version")
    figures(
        face="cli",
        fault="2 concurrent migrations on an empty database",
        processes=len(processes),
        queued_on_the_lock=queued,
        exit_codes=codes,
        tables_created=created,
        elapsed_ms=round(elapsed * 1000),
    )
    assert queued == len(processes), "the processes never all waited on the lock together"
    assert codes == [0, 0], [err.decode(errors="replace")[-600:] for _, err in outputs]
    assert created == 1, "the migration ran more (or less) than once"
    assert version == head_revision()


async def _waiting_for_the_migration_lock(dsn: str) -> int:
    value = await scalar(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND position($1 in query) > 0",
        LOCK_WAIT_MARK,
    )
    assert isinstance(value, int)
    return value
