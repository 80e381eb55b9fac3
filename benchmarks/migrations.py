"""Migrations under load: how long the tutorial's table stops answering while it grows.

A scratch database at revision 0001 (the tutorial's table) with N rows is upgraded while 32
asyncpg clients read and write `tutorials` with statements that work at every revision (get by
id, rename by id, insert a name). Measured, for each path:

- the longest any load statement took (a statement queued behind a lock waits that long);
- the longest lock wait seen in `pg_stat_activity` (load sessions with `wait_event_type =
  'Lock'`, sampled every 50 ms);
- load statements slower than 1 s, statements run, errors by kind;
- the migration's total time.

Paths: "first 0002" is revision 0002 as first written (`tests/db/first_0002.sql`: one
transaction, a type change and a stored generated column, both rewriting the table under
ACCESS EXCLUSIVE), run as one script on its own connection; "online" is the current
migrations, 0001 to head, run as `tutorials db upgrade` in a subprocess, as an operator would.

    uv run python -m benchmarks.run --full --suite migrations        # 1,000,000 rows
    uv run python -m benchmarks.migrations --rows 100000 [--path online]   # one quick run

Rows: 1,000,000 in `--full`, 100,000 in `--short`. Loopback only; every loop is bounded by a
deadline; the scratch databases are dropped, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.core import FULL, SHORT, Context, Table, admin_execute, admin_url_from_env
from benchmarks.seed import _REAL as WORDS
from tutorials.db.migrate import head_revision, upgrade

NAME = "migrations"
ROOT = Path(__file__).resolve().parent.parent
FIRST_0002 = ROOT / "tests" / "db" / "first_0002.sql"
CLIENTS = 32
#: Pause of each client between statements: a busy service, not a saturating one.
THINK_SECONDS = 0.005
LOAD_BEFORE = 2.0
LOAD_AFTER = 2.0
SAMPLE_SECONDS = 0.05
DEADLINE_SECONDS = 1800.0
APPLICATION = "bench-migrations-load"
ROWS = {SHORT.name: 100_000, FULL.name: 1_000_000}


@dataclass
class Load:
    """What the load saw: every statement's duration, the slowest ones, errors by kind."""

    statements: int = 0
    slow: int = 0  # over 1 s
    longest: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)
    longest_lock_wait: float = 0.0
    during: int = 0  # statements that finished while the migration ran
    migrating: bool = False


async def _client(dsn: str, rows: int, load: Load, stop: asyncio.Event) -> None:
    connection = await asyncpg.connect(dsn, server_settings={"application_name": APPLICATION})
    rng = random.Random()
    try:
        while not stop.is_set():
            pick = rng.random()
            tutorial = rng.randint(1, rows)
            started = time.perf_counter()
            try:
                if pick < 0.5:
                    await connection.fetchrow(
                        "SELECT tutorial_id, name FROM tutorials WHERE tutorial_id = $1", tutorial
                    )
                elif pick < 0.75:
                    await connection.execute(
                        "UPDATE tutorials SET name = $1 WHERE tutorial_id = $2",
                        f"Renamed {tutorial}",
                        tutorial,
                    )
                else:
                    await connection.fetchval(
                        "INSERT INTO tutorials (name) VALUES ($1) RETURNING tutorial_id",
                        f"Inserted {uuid.uuid4().hex[:8]}",
                    )
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                kind = type(exc).__name__
                load.errors[kind] += 1
                load.first_errors.setdefault(kind, str(exc)[:200])
            took = time.perf_counter() - started
            load.statements += 1
            load.during += load.migrating
            load.longest = max(load.longest, took)
            load.slow += took > 1.0
            await asyncio.sleep(THINK_SECONDS)
    finally:
        await connection.close()


async def _sampler(dsn: str, database: str, load: Load, stop: asyncio.Event) -> None:
    """The longest wait on a lock the server reports for a load session."""
    connection = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            waited = await connection.fetchval(
                "SELECT extract(epoch FROM max(clock_timestamp() - query_start)) "
                "FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 "
                "AND wait_event_type = 'Lock'",
                database,
                APPLICATION,
            )
            if waited is not None:
                load.longest_lock_wait = max(load.longest_lock_wait, float(waited))
            await asyncio.sleep(SAMPLE_SECONDS)
    finally:
        await connection.close()


async def _seed(dsn: str, rows: int) -> float:
    """N rows of the tutorial's table (revision 0001: a name only), made inside PostgreSQL."""
    started = time.monotonic()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO tutorials (name) SELECT initcap(w[1 + (i * 7) % n]) || ' ' || "
            "w[1 + (i * 13) % n] || ' ' || w[1 + (i * 31) % n] || ' ' || i "
            "FROM generate_series(1, $2::int) AS i, "
            "(SELECT $1::text[] AS w, cardinality($1::text[]) AS n) AS words",
            list(WORDS),
            rows,
        )
        await connection.execute("VACUUM (ANALYZE) tutorials")
    finally:
        await connection.close()
    return time.monotonic() - started


async def _first_0002(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(FIRST_0002.read_text(encoding="utf-8"))
    finally:
        await connection.close()


async def _online(url: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TUTORIALS_")},
        "DATABASE_URL": url,
        "TUTORIALS_AUTO_MIGRATE": "false",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from tutorials.cli import main; main()", "db", "upgrade",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), DEADLINE_SECONDS)
    if process.returncode != 0:
        raise RuntimeError(f"tutorials db upgrade failed: {err.decode(errors='replace')[-800:]}")


async def measure(ctx: Context, path: str, rows: int) -> dict[str, Any]:
    """One path on a scratch database of its own: seed at 0001, migrate under load, check."""
    database = f"bench_migrations_{path.replace(' ', '_')}_{uuid.uuid4().hex[:8]}"
    await admin_execute(ctx.admin_url, f'CREATE DATABASE "{database}"')
    dsn = ctx.dsn(database)
    try:
        engine = create_async_engine(ctx.url(database), poolclass=NullPool)
        try:
            await upgrade(engine, "0001")
        finally:
            await engine.dispose()
        ctx.log(f"migrations/{path}: seeding {rows:,} rows at 0001")
        seeded = await _seed(dsn, rows)
        load, stop, sampling = Load(), asyncio.Event(), asyncio.Event()
        clients = [asyncio.create_task(_client(dsn, rows, load, stop)) for _ in range(CLIENTS)]
        sampler = asyncio.create_task(_sampler(dsn, database, load, sampling))
        try:
            await asyncio.sleep(LOAD_BEFORE)
            ctx.log(f"migrations/{path}: migrating under load")
            load.migrating = True
            started = time.monotonic()
            if path == "first 0002":
                await asyncio.wait_for(_first_0002(dsn), DEADLINE_SECONDS)
            else:
                await _online(ctx.url(database).render_as_string(hide_password=False))
            migration = time.monotonic() - started
            load.migrating = False
            await asyncio.sleep(LOAD_AFTER)
        finally:
            stop.set()
            sampling.set()
            await asyncio.gather(*clients, sampler, return_exceptions=True)
        check = await asyncpg.connect(dsn)
        try:
            version = await check.fetchval("SELECT version_num FROM alembic_version")
            unsearchable = await check.fetchval(
                "SELECT count(*) FROM tutorials WHERE search IS NULL"
            )
        finally:
            await check.close()
        return {
            "path": path,
            "rows": rows,
            "seed_s": round(seeded, 1),
            "migration_s": round(migration, 1),
            "longest_statement_ms": round(load.longest * 1000),
            "longest_lock_wait_ms": round(load.longest_lock_wait * 1000),
            "statements_over_1s": load.slow,
            "statements": load.statements,
            "per_s_while_migrating": round(load.during / migration) if migration else 0,
            "errors": ", ".join(f"{k} {v}" for k, v in load.errors.items()) or "0",
            "first_errors": load.first_errors,
            "version": version,
            "search_null": unsearchable,
        }
    finally:
        await admin_execute(ctx.admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


PATHS = ("first 0002", "online")


async def run(ctx: Context, rows: int | None = None, paths: tuple[str, ...] = PATHS) -> list[Table]:
    count = rows or ROWS.get(ctx.mode.name, ROWS[SHORT.name])
    results = [await measure(ctx, path, count) for path in paths]
    columns = [
        "path",
        "migration_s",
        "longest_statement_ms",
        "longest_lock_wait_ms",
        "statements_over_1s",
        "statements",
        "per_s_while_migrating",
        "errors",
        "version",
        "search_null",
    ]
    notes = [
        f"{count:,} rows at 0001, {CLIENTS} asyncpg clients (get / rename / insert by id, "
        f"{THINK_SECONDS * 1000:.0f} ms between statements), load from {LOAD_BEFORE:.0f} s "
        f"before to {LOAD_AFTER:.0f} s after the migration",
        "first 0002: tests/db/first_0002.sql on one connection (ends at the first 0002, "
        f"not at head); online: `tutorials db upgrade` 0001 -> head ({head_revision()}) in a "
        "subprocess (its time includes the process start)",
    ]
    for result in results:
        for kind, message in result["first_errors"].items():
            notes.append(f"{result['path']}: first {kind}: {message}")
    return [
        Table(
            f"Migrations under load: 0001 -> head with {count:,} rows",
            columns,
            results,
            notes,
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS[SHORT.name])
    parser.add_argument("--path", action="append", choices=PATHS)
    args = parser.parse_args()
    ctx = Context(mode=SHORT, admin_url=admin_url_from_env())
    tables = asyncio.run(run(ctx, args.rows, tuple(args.path or PATHS)))
    for table in tables:
        print(table.render(), end="\n\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
