"""Running Alembic from the package: the same migrations `alembic` at the repository root sees.

The migrations ship inside the package (`tutorials/migrations`), so an installed `tutorials`
can upgrade a database with no repository checkout. `env.py` takes a PostgreSQL advisory lock
around the migration transaction, so two processes upgrading together cannot race: the second
waits, then finds nothing to do.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

#: Arbitrary but fixed: the advisory lock held while migrating (the bytes of "tutorial").
MIGRATION_LOCK_KEY = 0x7475746F7269616C


def migrations_dir() -> Path:
    return Path(str(files("tutorials") / "migrations"))


def alembic_config(url: URL | None = None, connection: Connection | None = None) -> Config:
    """An Alembic `Config` for the packaged migrations, aimed at `url` or an open connection."""
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
    """The single head of the migration graph."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None on an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade in one transaction on one of `engine`'s connections (env.py takes the lock)."""
    async with engine.begin() as connection:
        await connection.run_sync(
            lambda sync: command.upgrade(alembic_config(connection=sync), revision)
        )


async def schema_is_current(engine: AsyncEngine) -> bool:
    """True when the database's revision is the migrations' head (what /readyz checks)."""
    async with engine.connect() as connection:
        return await connection.run_sync(current_revision) == head_revision()
