"""Alembic environment (from `alembic init -t async`), pointed at our models and settings.

Three ways in:
- `alembic ...` at the repository root: the URL comes from the app's settings (DATABASE_URL,
  or the embedded server), and the async engine runs the migrations;
- `tutorials db ...` and the library: a URL in `config.attributes["url"]`;
- `tutorials.db.migrate.upgrade()`: an open connection in `config.attributes["connection"]`,
  whose owner commits; pytest-alembic puts an `AsyncEngine` there instead.
Whatever the way, the migration transaction first takes a PostgreSQL advisory lock, so two
processes upgrading at once run one after the other.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tutorials.db.engine import resolve_url
from tutorials.db.migrate import MIGRATION_LOCK_KEY
from tutorials.models import Base
from tutorials.settings import get_settings

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def _url() -> URL:
    url = config.attributes.get("url")
    if isinstance(url, URL):
        return url
    return resolve_url(get_settings())


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`) instead of running it."""
    context.configure(
        url=_url().render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_async_migrations(connectable: AsyncEngine | None) -> None:
    """Run the migrations over an engine given to us, or one made for this run (NullPool)."""
    engine = connectable or create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        if connectable is None:
            await engine.dispose()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if isinstance(connectable, Connection):
        do_run_migrations(connectable)
    else:  # None, or an AsyncEngine (pytest-alembic hands over its engine this way)
        asyncio.run(run_async_migrations(connectable))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
