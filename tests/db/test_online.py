"""Online migrations (tutorials.db.online, revisions 0002 and 0003): what a live table gets.

- upgrading from the tutorial's table never queues readers and writers behind a lock it waits
  for (a long transaction holding the table makes the old one-transaction 0002 stop them all);
- `search` holds the same document a generated column did, kept by the trigger on every write;
- a database that ran the first 0002 (a stored generated `search`) reaches the same schema
  without a rewrite, its values kept;
- a run that died half-way (an INVALID index left by a failed concurrent build included) is
  finished by running the upgrade again;
- the functions and trigger autogenerate cannot see are the same in the models and the
  migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from tests.support import asyncpg_dsn, run_async

from tutorials.db.migrate import head_revision, upgrade
from tutorials.models import SEARCH_DOCUMENT, Base

pytestmark = pytest.mark.slow  # over 10 s: scheduled first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
FIRST_0002 = Path(__file__).with_name("first_0002.sql")
OUR_FUNCTIONS = ("tutorials_tags_text", "tutorials_search_document", "tutorials_search_update")


def _at_0001(url: URL, rows: int = 0, names: str = "'Tutorial ' || i") -> None:
    async def make() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            await upgrade(engine, "0001")
        finally:
            await engine.dispose()
        if rows:
            await _execute(
                url,
                f"INSERT INTO tutorials (name) SELECT {names} FROM generate_series(1, {rows}) i",
            )

    run_async(make)


async def _execute(url: URL, sql: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _fetch(url: URL, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def _alembic(url: URL, *args: str) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alembic", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def _probe(url: URL, stop: asyncio.Event, latencies: list[float]) -> None:
    """A client writing and reading the table every 20 ms; each statement's time is kept."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        number = 0
        while not stop.is_set():
            number += 1
            started = time.monotonic()
            await connection.fetchval(
                "INSERT INTO tutorials (name) VALUES ($1) RETURNING tutorial_id", f"probe {number}"
            )
            await connection.fetchval("SELECT name FROM tutorials WHERE name = $1", "Tutorial 1")
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
    finally:
        await connection.close()


async def _upgrade_beside_a_long_transaction(url: URL, *upgrade_args: str) -> tuple[float, str]:
    """Upgrade while a transaction holds ACCESS SHARE on the table for 3 s; the probe's
    slowest statement (a statement queued behind the upgrade's lock request waits with it)."""
    blocker = await asyncpg.connect(asyncpg_dsn(url))
    latencies: list[float] = []
    stop = asyncio.Event()
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT count(*) FROM tutorials")
        probe = asyncio.create_task(_probe(url, stop, latencies))
        upgrading = asyncio.create_task(_alembic(url, *upgrade_args))
        await asyncio.sleep(3)
        await transaction.commit()
        code, output = await upgrading
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await blocker.close()
    await probe
    assert code == 0, output
    assert len(latencies) > 20, "the probe hardly ran: nothing was measured"
    return max(latencies), output


async def test_upgrade_from_0001_never_queues_the_table_behind_its_lock(
    empty_database_url: URL,
) -> None:
    _at_0001(empty_database_url, rows=2000)
    slowest, _ = await _upgrade_beside_a_long_transaction(empty_database_url, "upgrade", "head")
    # The old 0002 (test below) queues the probe for the blocker's 3 s; here each DDL step gives
    # way after its lock_timeout (300 ms) and tries again later.
    assert slowest < 1.0, f"a statement waited {slowest:.2f} s"
    versions = await _fetch(empty_database_url, "SELECT version_num FROM alembic_version")
    assert [r[0] for r in versions] == [head_revision()]


async def test_the_first_0002_queued_the_table_for_the_whole_wait(empty_database_url: URL) -> None:
    """What the test above guards against, shown on the revision as first written."""
    _at_0001(empty_database_url, rows=2000)
    blocker = await asyncpg.connect(asyncpg_dsn(empty_database_url))
    latencies: list[float] = []
    stop = asyncio.Event()
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT count(*) FROM tutorials")
        probe = asyncio.create_task(_probe(empty_database_url, stop, latencies))
        migrating = asyncio.create_task(_execute(empty_database_url, FIRST_0002.read_text()))
        await asyncio.sleep(3)
        await transaction.commit()
        await migrating
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await blocker.close()
    await probe
    assert max(latencies) > 2.0


def _document_matches(url: URL) -> list[asyncpg.Record]:
    return run_async(
        lambda: _fetch(
            url,
            f"SELECT count(*) AS rows, count(*) FILTER (WHERE search = ({SEARCH_DOCUMENT})) "
            "AS right FROM tutorials",
        )
    )


def test_search_holds_the_document_on_every_write(empty_database_url: URL) -> None:
    _at_0001(empty_database_url, rows=300)
    run_async(lambda: upgrade_to_head(empty_database_url))
    assert [tuple(r) for r in _document_matches(empty_database_url)] == [(300, 300)]

    async def writes() -> list[tuple[str, str]]:
        await _execute(
            empty_database_url,
            "INSERT INTO tutorials (name, description, tags) "
            "VALUES ('Async Rust', 'Futures explained', '{tokio,async}');"
            "UPDATE tutorials SET description = 'Pinned futures' WHERE name = 'Async Rust';"
            "UPDATE tutorials SET version = version + 1 WHERE name = 'Tutorial 1';"
            "UPDATE tutorials SET search = 'forged' WHERE name = 'Tutorial 2';"
            "UPDATE tutorials SET tags = '{kept}' WHERE name = 'Tutorial 3'",
        )
        rows = await _fetch(
            empty_database_url,
            "SELECT name, search::text FROM tutorials WHERE name IN "
            "('Async Rust', 'Tutorial 2', 'Tutorial 3') ORDER BY name",
        )
        return [(r[0], r[1]) for r in rows]

    assert run_async(writes) == [
        ("Async Rust", "'async':1A,6C 'futur':4B 'pin':3B 'rust':2A 'tokio':5C"),
        ("Tutorial 2", "'2':2A 'tutori':1A"),
        ("Tutorial 3", "'3':2A 'kept':3C 'tutori':1A"),
    ]
    assert [tuple(r) for r in _document_matches(empty_database_url)] == [(301, 301)]


async def upgrade_to_head(url: URL) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def test_a_database_that_ran_the_first_0002_reaches_head_without_a_rewrite(
    empty_database_url: URL,
) -> None:
    _at_0001(empty_database_url, rows=500)
    run_async(lambda: _execute(empty_database_url, FIRST_0002.read_text()))

    async def state() -> tuple[object, ...]:
        rows = await _fetch(
            empty_database_url,
            "SELECT pg_relation_filenode('tutorials'), "
            "(SELECT attgenerated::text FROM pg_attribute WHERE attrelid = 'tutorials'::regclass "
            "AND attname = 'search'), "
            "(SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tutorials'::regclass "
            "AND tgname = 'tutorials_search')",
        )
        return tuple(rows[0])

    filenode, generated, triggers = run_async(state)
    assert (generated, triggers) == ("s", 0)
    run_async(lambda: upgrade_to_head(empty_database_url))
    assert run_async(state) == (filenode, "", 1)  # same file: no rewrite
    run_async(
        lambda: _execute(
            empty_database_url,
            "UPDATE tutorials SET name = 'Renamed' WHERE tutorial_id = 1;"
            "INSERT INTO tutorials (name) VALUES ('After the upgrade')",
        )
    )
    assert [tuple(r) for r in _document_matches(empty_database_url)] == [(501, 501)]
    code, output = run_async(lambda: _alembic(empty_database_url, "check"))
    assert code == 0, output
    assert "No new upgrade operations detected" in output


def test_a_run_that_died_half_way_is_finished_by_running_it_again(
    empty_database_url: URL,
) -> None:
    # Duplicate names: a concurrent unique build on them fails and leaves an INVALID index.
    _at_0001(empty_database_url, rows=400, names="'Same name'")
    offline = run_async(lambda: _alembic(empty_database_url, "upgrade", "--sql", "0001:0002"))[1]
    first_steps = offline.split("CREATE UNIQUE INDEX CONCURRENTLY", 1)[0]
    assert "DO $$" in first_steps  # the expand steps and the backfill, not the rest

    async def die_half_way() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(empty_database_url))
        try:
            # One statement at a time, as psql sends them (a DO block that commits cannot run
            # inside a multi-statement query).
            script = first_steps.split("-- Running upgrade 0001 -> 0002", 1)[1]
            for statement in script.split(";\n\n"):
                if statement.strip():
                    await connection.execute(statement)
            with contextlib.suppress(asyncpg.UniqueViolationError):
                await connection.execute(
                    "CREATE UNIQUE INDEX CONCURRENTLY ix_tutorials_search ON tutorials (name)"
                )
        finally:
            await connection.close()

    run_async(die_half_way)
    invalid = run_async(
        lambda: _fetch(
            empty_database_url,
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_tutorials_search'::regclass",
        )
    )
    assert [r[0] for r in invalid] == [False]
    run_async(lambda: upgrade_to_head(empty_database_url))
    code, output = run_async(lambda: _alembic(empty_database_url, "check"))
    assert code == 0, output
    indexes = run_async(
        lambda: _fetch(
            empty_database_url,
            "SELECT indexrelid::regclass::text, indisvalid, pg_get_indexdef(indexrelid) "
            "FROM pg_index WHERE indrelid = 'tutorials'::regclass ORDER BY 1",
        )
    )
    assert [(r[0], r[1]) for r in indexes] == [
        ("ix_tutorials_name_key", True),
        ("ix_tutorials_search", True),
        ("ix_tutorials_tags", True),
        ("ix_tutorials_updated_at", True),
        ("pk_tutorials", True),
        ("uq_tutorials_url", True),
    ]
    assert "gin (search)" in indexes[1][2]
    assert [tuple(r) for r in _document_matches(empty_database_url)] == [(400, 400)]


def _definitions(url: URL) -> tuple[list[str], list[str]]:
    async def read() -> tuple[list[str], list[str]]:
        names = ", ".join(f"'{name}'" for name in OUR_FUNCTIONS)
        functions = await _fetch(
            url,
            f"SELECT pg_get_functiondef(oid) FROM pg_proc WHERE proname IN ({names}) "
            "ORDER BY proname",
        )
        triggers = await _fetch(
            url,
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = 'tutorials'::regclass AND NOT tgisinternal ORDER BY tgname",
        )
        return [r[0] for r in functions], [r[0] for r in triggers]

    return run_async(read)


def test_the_models_declare_the_functions_and_trigger_the_migrations_make(
    database_url: URL, empty_database_url: URL
) -> None:
    async def create_all() -> None:
        engine = create_async_engine(empty_database_url, poolclass=NullPool)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
        finally:
            await engine.dispose()

    run_async(create_all)
    functions, triggers = _definitions(database_url)
    assert len(functions) == len(OUR_FUNCTIONS)
    assert triggers == [
        "CREATE TRIGGER tutorials_search BEFORE INSERT OR UPDATE OF name, description, tags, "
        "search ON public.tutorials FOR EACH ROW EXECUTE FUNCTION tutorials_search_update()"
    ]
    assert _definitions(empty_database_url) == (functions, triggers)
