"""Running Alembic from the package: the same migrations `alembic` at the repository root sees.

The migrations ship inside the package (`tutorials/migrations`), so an installed `tutorials`
can upgrade a database with no repository checkout. `env.py` holds a PostgreSQL advisory lock
(`acquire_migration_lock`) for the whole run, so two processes upgrading together cannot race:
the second waits, then finds nothing to do.

Every start of a service, every command (and the first call of the library) asks for an
upgrade, and nearly always the database is already at head. Alembic is costly for a no-op:
importing it (with Mako and Pygments) and SQLAlchemy, and loading its script directory,
`env.py` and a migration context take a few hundred milliseconds of a start-up. So
`upgrade_to_head` first reads the revisions stored in `alembic_version` with one query on the
service's own asyncpg pool (`schema_is_current`) and compares them with the head of the
scripts, which is read from their source without importing them (`head_revision`); only when
they differ are SQLAlchemy and Alembic loaded and run, under the lock, and Alembic then
decides: upgrade a database that is behind, refuse one at a revision the scripts do not know
(e.g. migrated by newer code). A command at head thus never imports SQLAlchemy or Alembic.
Skipping the lock when the database is at head is safe: a revision is stamped only after its
last step has committed, so a head read outside the lock is a committed, complete schema.

This module imports SQLAlchemy only inside the functions that use it, for the same reason.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from tutorials.db.database import Connection as PoolConnection
    from tutorials.db.database import Database

#: Arbitrary but fixed: the advisory lock held while migrating (the bytes of "tutorial").
MIGRATION_LOCK_KEY = 0x7475746F7269616C

#: In the statements of a process waiting for another's migration, so it can be seen waiting.
LOCK_WAIT_MARK = "/* tutorials: waiting for the migration lock */"
#: Seconds between two tries of the migration lock.
LOCK_POLL_INTERVAL = 0.2

#: Alembic's version table (its default name; env.py does not change it), found through the
#: search_path as Alembic finds it.
VERSION_TABLE = "alembic_version"

#: Which files of versions/ Alembic loads as scripts (its own pattern, for source files).
_SCRIPT_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_SCRIPT_FIELDS = ("revision", "down_revision", "branch_labels", "depends_on")


def acquire_migration_lock(connection: Connection) -> None:
    """Take the migration advisory lock on the session, waiting as long as another holds it.

    Tried, not waited for (`pg_advisory_lock`): a session blocked on the lock sits in a
    transaction whose snapshot the holder's `CREATE INDEX CONCURRENTLY` must outlast, a
    deadlock, and holds back vacuum for the whole of the other migration. Each try and each
    pause is a transaction of its own, ended at once; the pause is `pg_sleep` in the server, so
    an auto-migrating service's event loop is never blocked by a sleeping thread.
    """
    from sqlalchemy import text

    while True:
        got = connection.execute(
            text(f"SELECT pg_try_advisory_lock(:key) {LOCK_WAIT_MARK}"), {"key": MIGRATION_LOCK_KEY}
        ).scalar()
        connection.commit()
        if got:
            return
        connection.execute(
            text(f"SELECT pg_sleep(:seconds) {LOCK_WAIT_MARK}"), {"seconds": LOCK_POLL_INTERVAL}
        )
        connection.commit()


def release_migration_lock(connection: Connection) -> None:
    """Release the lock and reset what online steps set on the session (back to the
    connection's own defaults, e.g. a service's statement_timeout); a connection that cannot
    is discarded, which releases the lock too."""
    from sqlalchemy import text

    try:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("RESET statement_timeout"))
        connection.execute(text("RESET lock_timeout"))
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
    except Exception:
        connection.invalidate()
        raise


def migrations_dir() -> Path:
    """The package's migrations: a directory beside this package's modules (Alembic reads
    them as files, so the package is never run from a zip; `importlib.resources` would cost
    every start-up ~10 ms to say the same)."""
    return Path(__file__).resolve().parent.parent / "migrations"


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
    from sqlalchemy import text

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
        await connection.rollback()  # end the check's read: env.py owns every transaction
        from alembic import command

        await connection.run_sync(
            lambda sync: command.upgrade(alembic_config(connection=sync), revision)
        )


_STORED_REVISIONS = (
    f"SELECT version_num FROM {VERSION_TABLE} WHERE to_regclass('{VERSION_TABLE}') IS NOT NULL"
)


async def schema_is_current(database: Database) -> bool:
    """True when the database's revision is the migrations' head (what /readyz checks).

    One read on the service's own pool, so readiness says whether requests can be served;
    on the primary, with replicas too (readiness is about the server writes need).
    """

    async def stored(connection: PoolConnection) -> list[str]:
        if await connection.fetchval(f"SELECT to_regclass('{VERSION_TABLE}')") is None:
            return []  # an empty database
        return sorted(row[0] for row in await connection.fetch(_STORED_REVISIONS))

    head = head_revision()
    return await database.read(stored, primary=True) == ([head] if head is not None else [])


async def upgrade_to_head(database: Database) -> None:
    """The start-up upgrade (`auto_migrate`): one read on the service's pool when the database
    is at head (nearly always), else Alembic on the database's SQLAlchemy engine."""
    if await schema_is_current(database):
        return
    await upgrade(database.engine)
