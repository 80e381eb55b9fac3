"""Alembic environment (from `alembic init -t async`), pointed at our models and settings.

Three ways in:
- `alembic ...` at the repository root: the URL comes from the app's settings (DATABASE_URL,
  or the embedded server), and the async engine runs the migrations;
- `tutorials db ...` and the library: a URL in `config.attributes["url"]`;
- `tutorials.db.migrate.upgrade()`: an open connection (not in a transaction) in
  `config.attributes["connection"]`; pytest-alembic puts an `AsyncEngine` there instead.
Whatever the way, the run first takes a PostgreSQL advisory lock on its session and holds it
to the end, so two processes upgrading at once run one after the other. Each revision runs in
a transaction of its own (`transaction_per_migration`) and is stamped when it ends; a revision
written with `tutorials.db.online` leaves that transaction to commit its steps one by one,
which is why the lock belongs to the session and not to a transaction.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tutorials.db.engine import resolve_url
from tutorials.db.migrate import acquire_migration_lock, release_migration_lock
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
    return resolve_url(get_settings()).sqlalchemy_url()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`) instead of running it."""
    context.configure(
        url=_url().render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    # Taken (and its transactions ended) before Alembic looks at the connection: Alembic then
    # owns every transaction of the run (autocommit blocks need that); the lock outlives them.
    acquire_migration_lock(connection)
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        release_migration_lock(connection)


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
