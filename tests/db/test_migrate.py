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
from pytest_alembic import MigrationContext
from sqlalchemy.engine import URL
from tests.support import asyncpg_dsn, run_async

from tutorials.db.migrate import head_revision, schema_is_current, upgrade

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


def test_rows_survive_growing_into_the_catalog(alembic_runner: MigrationContext) -> None:
    alembic_runner.migrate_up_to("0001")
    alembic_runner.insert_into("tutorials", [{"name": "old one"}, {"name": "old two"}])
    alembic_runner.migrate_up_to("heads")
    alembic_runner.insert_into("tutorials", {"name": "new"})
    alembic_runner.migrate_down_to("0001")
    alembic_runner.insert_into("tutorials", {"name": "after downgrade"})
    alembic_runner.migrate_up_to("heads")


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


def test_schema_is_current_only_at_head(empty_database_url: URL) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async def check() -> tuple[bool, bool]:
        engine = create_async_engine(empty_database_url)
        try:
            before = await schema_is_current(engine)
            await upgrade(engine)
            await upgrade(engine)  # a second upgrade is a no-op
            return before, await schema_is_current(engine)
        finally:
            await engine.dispose()

    assert run_async(check) == (False, True)
