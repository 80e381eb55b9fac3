"""Running Alembic from the package: the same migrations `alembic` at the repository root sees.

The migrations ship inside the package (`tutorials/migrations`), so an installed `tutorials`
can upgrade a database with no repository checkout. `env.py` takes a PostgreSQL advisory lock
around the migration transaction, so two processes upgrading together cannot race: the second
waits, then finds nothing to do.

Every start of a service (and the first call of the library) asks for an upgrade, and nearly
always the database is already at head. Alembic is costly for a no-op: importing it (with Mako
and Pygments) and loading its script directory, `env.py` and a migration context take a few
hundred milliseconds of a start-up. So `upgrade` first reads the revisions stored in
`alembic_version` (one query) and compares them with the head of the scripts, which is read
from their source without importing them (`head_revision`); only when they differ is Alembic
loaded and run, under its lock, and Alembic then decides: upgrade a database that is behind,
refuse one at a revision the scripts do not know (e.g. migrated by newer code). Skipping the
lock when the database is at head is safe: the migration transaction writes the new revision
and the schema together, so a head read outside the lock is a committed, complete schema.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

#: Arbitrary but fixed: the advisory lock held while migrating (the bytes of "tutorial").
MIGRATION_LOCK_KEY = 0x7475746F7269616C

#: Alembic's version table (its default name; env.py does not change it), found through the
#: search_path as Alembic finds it.
VERSION_TABLE = "alembic_version"

#: Which files of versions/ Alembic loads as scripts (its own pattern, for source files).
_SCRIPT_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_SCRIPT_FIELDS = ("revision", "down_revision", "branch_labels", "depends_on")


def migrations_dir() -> Path:
    return Path(str(files("tutorials") / "migrations"))


def alembic_config(url: URL | None = None, connection: Connection | None = None) -> Config:
    """An Alembic `Config` for the packaged migrations, aimed at `url` or an open connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.attributes["url"] = url
    if connection is not None:
        config.attributes["connection"] = connection
    config.attributes["configure_logger"] = False
    return config


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The single head of the migration graph.

    Read from the scripts' source when the graph is a plain line of literal revisions (what
    this project writes); anything else (merges, branch labels, dependencies, a file that is
    not a plain script) is left to Alembic, which also raises when there are several heads.
    """
    scanned = scan_head(migrations_dir() / "versions")
    return scanned if scanned is not None else alembic_head_revision()


def alembic_head_revision() -> str | None:
    """The head as Alembic computes it (loads the scripts)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def scan_head(versions: Path) -> str | None:
    """The head of a linear chain of scripts in `versions`, from their source; None if unsure.

    None means "ask Alembic": no scripts, a script whose revision fields are not literals, a
    merge, a branch label or dependency, a duplicate revision, a down_revision without its
    script, or anything but one chain from one root through every script to one head.
    """
    try:
        names = sorted(p.name for p in versions.iterdir() if p.is_file())
    except OSError:
        return None
    parents: dict[str, str | None] = {}
    for name in names:
        if not _SCRIPT_FILE.match(name):
            continue
        fields = _literal_fields(versions / name)
        if fields is None:
            return None
        revision, down = fields.get("revision"), fields.get("down_revision")
        if not isinstance(revision, str) or not revision or revision in parents:
            return None
        if down is not None and not isinstance(down, str):
            return None
        if fields.get("branch_labels") or fields.get("depends_on"):
            return None
        parents[revision] = down
    children = {down for down in parents.values() if down is not None}
    heads = [revision for revision in parents if revision not in children]
    if len(heads) != 1:
        return None
    seen: set[str] = set()
    walking: str | None = heads[0]
    while walking is not None:
        if walking in seen or walking not in parents:
            return None  # a cycle, or a down_revision with no script
        seen.add(walking)
        walking = parents[walking]
    return heads[0] if len(seen) == len(parents) else None


def _literal_fields(path: Path) -> dict[str, object] | None:
    """Module-level `revision = "..."`-style assignments of a script; None if not plain."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    fields: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name) or target.id not in _SCRIPT_FIELDS:
            continue
        try:
            fields[target.id] = ast.literal_eval(value)
        except ValueError:
            return None
    return fields


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, as Alembic reads it (None on an empty database)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def stored_revisions(connection: AsyncConnection) -> list[str]:
    """The revisions in the version table, sorted; [] when there is none (an empty database)."""
    found = await connection.scalar(
        text("SELECT to_regclass(:table) IS NOT NULL"), {"table": VERSION_TABLE}
    )
    if not found:
        return []
    rows = await connection.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return sorted(rows)


async def _at_head(connection: AsyncConnection) -> bool:
    head = head_revision()
    return await stored_revisions(connection) == ([head] if head is not None else [])


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: head) with Alembic, under env.py's lock.

    For "head", a database already there is left alone without loading Alembic (one query;
    see the module docstring); one behind is upgraded, one at an unknown revision refused.
    """
    async with engine.connect() as connection:
        if revision == "head" and await _at_head(connection):
            return
        await connection.rollback()  # end the check's read; the upgrade is a transaction of its own
        from alembic import command

        async with connection.begin():
            await connection.run_sync(
                lambda sync: command.upgrade(alembic_config(connection=sync), revision)
            )


async def schema_is_current(engine: AsyncEngine) -> bool:
    """True when the database's revision is the migrations' head (what /readyz checks)."""
    async with engine.connect() as connection:
        return await _at_head(connection)
