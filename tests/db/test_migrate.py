"""Migrations: the tutorial's workflow at the repository root, data kept, and no races.

pytest-alembic's built-in tests (single head, upgrade, up/down consistency, models match the
migrations) run too, bound to tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from alembic.util import CommandError
from pytest_alembic import MigrationContext
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from tests.support import admin_execute, asyncpg_dsn, run_async

from tutorials.db.database import Database
from tutorials.db.migrate import (
    alembic_head_revision,
    head_revision,
    migrations_dir,
    scan_head,
    schema_is_current,
    stored_revisions,
    upgrade,
)
from tutorials.settings import Settings

pytestmark = pytest.mark.slow  # over 10 s: scheduled first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def _alembic(url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    """`alembic ARGS` at the repository root, as the tutorial runs it, on `url`."""
    env = {**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tutorials_workflow_at_the_root(empty_database_url: URL) -> None:
    for args in (["upgrade", "head"], ["check"], ["downgrade", "base"], ["upgrade", "head"]):
        result = _alembic(empty_database_url, *args)
        assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in _alembic(empty_database_url, "check").stdout
    current = _alembic(empty_database_url, "current")
    assert f"{head_revision()} (head)" in current.stdout


def test_two_processes_upgrading_together_apply_once(empty_database_url: URL) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_url.render_as_string(hide_password=False)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    applied = sum(output.count("Running upgrade  -> 0001") for output in outputs)
    assert applied == 1, outputs


def test_rows_survive_growing_into_the_catalog(
    alembic_runner: MigrationContext, empty_database_url: URL
) -> None:
    alembic_runner.migrate_up_to("0001")
    alembic_runner.insert_into("tutorials", [{"name": "old one"}, {"name": "old two"}])
    alembic_runner.migrate_up_to("heads")
    alembic_runner.insert_into("tutorials", {"name": "new"})
    alembic_runner.migrate_down_to("0001")
    alembic_runner.insert_into("tutorials", {"name": "after downgrade"})
    alembic_runner.migrate_up_to("heads")

    async def stored() -> list[tuple[int, str, int, list[str]]]:
        connection = await asyncpg.connect(asyncpg_dsn(empty_database_url))
        try:
            rows = await connection.fetch(
                "SELECT tutorial_id, name, version, tags FROM tutorials ORDER BY tutorial_id"
            )
        finally:
            await connection.close()
        return [tuple(row) for row in rows]  # type: ignore[misc]

    # Every row went through two upgrades and a downgrade, with its id and name, and rows
    # written at 0001 got the catalog's defaults.
    assert run_async(stored) == [
        (1, "old one", 1, []),
        (2, "old two", 1, []),
        (3, "new", 1, []),
        (4, "after downgrade", 1, []),
    ]


def test_upgrade_keeps_ids_and_continues_after_them(
    alembic_runner: MigrationContext, empty_database_url: URL
) -> None:
    alembic_runner.migrate_up_to("0001")
    alembic_runner.insert_into("tutorials", [{"name": "old one"}, {"name": "old two"}])
    alembic_runner.migrate_up_to("heads")

    async def insert_and_read() -> tuple[int, list[asyncpg.Record]]:
        connection = await asyncpg.connect(asyncpg_dsn(empty_database_url))
        try:
            new_id = await connection.fetchval(
                "INSERT INTO tutorials (name) VALUES ('new') RETURNING tutorial_id"
            )
            rows = await connection.fetch(
                "SELECT tutorial_id, name, version, tags FROM tutorials ORDER BY tutorial_id"
            )
        finally:
            await connection.close()
        return new_id, rows

    new_id, rows = run_async(insert_and_read)
    assert new_id == 3
    assert [(r["name"], r["version"], r["tags"]) for r in rows] == [
        ("old one", 1, []),
        ("old two", 1, []),
        ("new", 1, []),
    ]


def test_schema_is_current_only_at_head(empty_database_url: URL, settings: Settings) -> None:
    async def check() -> tuple[bool, bool]:
        database = Database.from_url(empty_database_url, settings)
        try:
            before = await schema_is_current(database)
            await upgrade(database.engine)
            await upgrade(database.engine)  # a second upgrade is a no-op
            return before, await schema_is_current(database)
        finally:
            await database.dispose()

    assert run_async(check) == (False, True)


# --------------------------------------------------------------------------- the cheap check
# `upgrade` reads alembic_version and compares it with the head read from the scripts' source
# before loading Alembic: at head nothing else happens; anything else goes through Alembic.


def _engine(url: URL) -> AsyncEngine:
    return create_async_engine(url, poolclass=NullPool)


def _database(url: URL) -> Database:
    return Database.from_url(url, Settings(_env_file=None, auto_migrate=False))  # type: ignore[call-arg]


async def _versions(url: URL) -> list[str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return [r["version_num"] for r in await connection.fetch("SELECT * FROM alembic_version")]
    finally:
        await connection.close()


def test_the_head_read_from_source_is_alembics() -> None:
    assert scan_head(migrations_dir() / "versions") == alembic_head_revision()
    assert head_revision() == alembic_head_revision()
    assert head_revision() is not None


def test_upgrade_at_head_does_not_load_alembic(database_url: URL) -> None:
    code = (
        "import asyncio, sys\n"
        "from tutorials.db.database import Database\n"
        "from tutorials.db.migrate import schema_is_current, upgrade\n"
        "async def main():\n"
        "    database = Database.from_url(sys.argv[1])\n"
        "    try:\n"
        "        await upgrade(database.engine)\n"
        "        print(await schema_is_current(database), 'alembic' in sys.modules)\n"
        "    finally:\n"
        "        await database.dispose()\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, database_url.render_as_string(hide_password=False)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_upgrade_still_migrates_a_database_behind_head(empty_database_url: URL) -> None:
    async def check() -> tuple[bool, list[str], bool, list[str]]:
        database = _database(empty_database_url)
        try:
            await upgrade(database.engine, "0001")
            behind = await schema_is_current(database), await _versions(empty_database_url)
            await upgrade(database.engine)
            return (*behind, await schema_is_current(database), await _versions(empty_database_url))
        finally:
            await database.dispose()

    assert run_async(check) == (False, ["0001"], True, [head_revision()])


def test_upgrade_still_refuses_a_database_ahead_of_the_scripts(database_url: URL) -> None:
    run_async(
        lambda: admin_execute(database_url, "UPDATE alembic_version SET version_num = 'f00d'")
    )

    async def check() -> bool:
        database = _database(database_url)
        try:
            with pytest.raises(CommandError, match="f00d"):
                await upgrade(database.engine)
            return await schema_is_current(database)
        finally:
            await database.dispose()

    assert run_async(check) is False
    assert run_async(lambda: _versions(database_url)) == ["f00d"]  # left as it was


def test_schema_is_not_current_with_two_stored_revisions(database_url: URL) -> None:
    head = head_revision()
    run_async(lambda: admin_execute(database_url, "INSERT INTO alembic_version VALUES ('0001')"))

    async def check() -> tuple[list[str], bool]:
        database = _database(database_url)
        try:
            async with database.engine.connect() as connection:
                stored = await stored_revisions(connection)
            return stored, await schema_is_current(database)
        finally:
            await database.dispose()

    assert run_async(check) == (sorted(["0001", str(head)]), False)


def test_stored_revisions_of_an_empty_database(empty_database_url: URL) -> None:
    async def check() -> list[str]:
        engine = _engine(empty_database_url)
        try:
            async with engine.connect() as connection:
                return await stored_revisions(connection)
        finally:
            await engine.dispose()

    assert run_async(check) == []


def _script(directory: Path, name: str, body: str) -> None:
    (directory / name).write_text(body, encoding="utf-8")


def _linear(directory: Path) -> None:
    _script(directory, "a_first.py", 'revision = "a"\ndown_revision = None\n')
    _script(directory, "b_second.py", 'revision: str = "b"\ndown_revision: str | None = "a"\n')
    _script(directory, "c_third.py", 'revision = "c"\ndown_revision = "b"\nbranch_labels = None\n')


def test_scan_head_follows_a_plain_chain(tmp_path: Path) -> None:
    _linear(tmp_path)
    _script(tmp_path, "__init__.py", 'revision = "ignored"\n')
    _script(tmp_path, ".#c_third.py", "not python at all (an editor's lock file)")
    _script(tmp_path, "README", "not a script")
    assert scan_head(tmp_path) == "c"


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("d_merge.py", 'revision = "d"\ndown_revision = ("b", "c")\n'),
        ("d_branch.py", 'revision = "d"\ndown_revision = "b"\n'),  # two heads: c and d
        ("d_labelled.py", 'revision = "d"\ndown_revision = "c"\nbranch_labels = ("x",)\n'),
        ("d_depends.py", 'revision = "d"\ndown_revision = "c"\ndepends_on = "a"\n'),
        ("d_computed.py", 'revision = "d" + ""\ndown_revision = "c"\n'),
        ("d_dynamic.py", 'import os\nrevision = os.environ["R"]\ndown_revision = "c"\n'),
        ("d_missing.py", 'down_revision = "c"\n'),
        ("d_duplicate.py", 'revision = "c"\ndown_revision = "b"\n'),
        ("d_orphan.py", 'revision = "d"\ndown_revision = "zz"\n'),
        ("d_broken.py", "revision = (\n"),
        ("x_cycle.py", 'revision = "x"\ndown_revision = "y"\n'),
    ],
)
def test_scan_head_leaves_anything_unusual_to_alembic(tmp_path: Path, name: str, body: str) -> None:
    _linear(tmp_path)
    _script(tmp_path, name, body)
    if name == "x_cycle.py":
        _script(tmp_path, "y_cycle.py", 'revision = "y"\ndown_revision = "x"\n')
    assert scan_head(tmp_path) is None


def test_scan_head_of_no_scripts(tmp_path: Path) -> None:
    assert scan_head(tmp_path) is None
    assert scan_head(tmp_path / "missing") is None
