"""What a command imports: each command's start-up is its own.

`tutorials --help` loads Typer and nothing of the service; `tutorials get` loads the service's
path (asyncpg, pydantic) but never SQLAlchemy, Alembic, the API or Rich, even with
`auto_migrate` on, since a database at head is recognised with one read on asyncpg's pool. A
database behind the migrations is still brought to head by the first command.
(Times are measured by benchmarks/cli.py, not asserted here.)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import asyncpg
from sqlalchemy.engine import URL
from tests.support import asyncpg_dsn, run_async

from tutorials.db.migrate import head_revision

#: Loaded by no command that does not need them.
HEAVY = ("sqlalchemy", "alembic", "mako", "fastapi", "starlette", "uvicorn", "rich")


def loaded_after(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    """Run the command in a process of its own; its exit code, which of `HEAVY` (and pydantic,
    asyncpg) it had imported when it ended, and its stdout."""
    watched = (*HEAVY, "pydantic", "asyncpg")
    probe = (
        "import atexit, sys\n"
        f"watched = {watched!r}\n"
        "atexit.register(lambda: print(sorted(m for m in watched if m in sys.modules),"
        " file=sys.stderr))\n"
        "sys.argv[0] = 'tutorials'\n"
        "from tutorials.cli import main\n"
        "main()\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    loaded = ast.literal_eval(process.stderr.strip().splitlines()[-1])
    return process.returncode, loaded, process.stdout


def test_help_loads_typer_alone() -> None:
    code, loaded, out = loaded_after("--help")
    assert code == 0 and out.startswith("Usage: tutorials [OPTIONS] COMMAND [ARGS]...")
    assert loaded == []


def test_a_command_at_head_loads_neither_sqlalchemy_nor_alembic(database_env: URL) -> None:
    env = {**os.environ, "TUTORIALS_AUTO_MIGRATE": "true"}  # the check runs, and finds head
    code, loaded, out = loaded_after("list", env=env)
    assert (code, out) == (0, "no tutorials yet\n")
    assert loaded == ["asyncpg", "pydantic"]


def test_a_database_behind_the_migrations_is_brought_to_head(empty_database_url: URL) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": empty_database_url.render_as_string(hide_password=False),
        "TUTORIALS_AUTO_MIGRATE": "true",
    }
    code, loaded, out = loaded_after("list", env=env)
    assert (code, out) == (0, "no tutorials yet\n")
    assert "alembic" in loaded  # this time the upgrade had work to do

    async def revision() -> str:
        connection = await asyncpg.connect(asyncpg_dsn(empty_database_url))
        try:
            return str(await connection.fetchval("SELECT version_num FROM alembic_version"))
        finally:
            await connection.close()

    assert run_async(revision) == head_revision()
