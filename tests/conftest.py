"""Test fixtures: a real PostgreSQL, and a database of its own for every test.

The server is the one `TEST_DATABASE_URL` names (any database on it; we create our own), or
else a private embedded server started for this run in a temporary root and stopped at the end.

Isolation: the migrations run once into a template database; each test that asks for a
database gets a fresh copy (`CREATE DATABASE ... TEMPLATE`), dropped afterwards. No state is
shared between tests, and no test depends on another's order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from tests.support import admin_execute, asyncpg_dsn, run_async

from tutorials.db.migrate import alembic_config as packaged_alembic_config
from tutorials.db.migrate import upgrade
from tutorials.db.session import Database, close_default_database
from tutorials.settings import Settings, get_settings, normalize_database_url


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """An admin URL of the PostgreSQL server the tests use."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield normalize_database_url(configured)
        return
    from tutorials.db.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="tutorials-test-", dir="/tmp"))
    root.chmod(0o755)
    server = EmbeddedPostgres(root)
    try:
        yield normalize_database_url(server.start())
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_name(server_url: URL) -> Iterator[str]:
    """A database at the migrations' head, copied for each test."""
    name = f"tutorials_template_{uuid.uuid4().hex[:12]}"
    run_async(lambda: admin_execute(server_url, f'CREATE DATABASE "{name}"'))

    async def migrate() -> None:
        database = Database.from_url(server_url.set(database=name), Settings())
        try:
            await upgrade(database.engine)
        finally:
            await database.dispose()

    run_async(migrate)
    yield name
    run_async(lambda: admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _fresh_database(server_url: URL, template: str | None) -> Iterator[URL]:
    name = f"tutorials_test_{uuid.uuid4().hex[:12]}"
    source = f' TEMPLATE "{template}"' if template else ""
    run_async(lambda: admin_execute(server_url, f'CREATE DATABASE "{name}"{source}'))
    try:
        yield server_url.set(database=name)
    finally:
        run_async(
            lambda: admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


@pytest.fixture
def database_url(server_url: URL, template_name: str) -> Iterator[URL]:
    """A fresh database of this test's own, at the migrations' head."""
    yield from _fresh_database(server_url, template_name)


@pytest.fixture
def empty_database_url(server_url: URL) -> Iterator[URL]:
    """A fresh empty database (no migrations applied)."""
    yield from _fresh_database(server_url, None)


@pytest.fixture
def settings() -> Settings:
    """Settings as the tests want them: never the developer's environment or `.env`."""
    return Settings(_env_file=None, auto_migrate=False)  # type: ignore[call-arg]


@pytest.fixture
async def database(database_url: URL, settings: Settings) -> AsyncIterator[Database]:
    """A `Database` (engine + sessionmaker) on this test's own database."""
    database = Database.from_url(database_url, settings)
    yield database
    await database.dispose()


@pytest.fixture
async def session(database: Database) -> AsyncIterator[AsyncSession]:
    """One unit of work on this test's database; committed when the test ends normally."""
    async with database.session() as session:
        yield session


@pytest.fixture
def dsn(database_url: URL) -> str:
    """This test's database as a plain asyncpg DSN, for checking rows behind the library's back."""
    return asyncpg_dsn(database_url)


@pytest.fixture
def database_env(database_url: URL, monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    """Point settings (so the CLI and the library's default database) at this test's database."""
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("TUTORIALS_AUTO_MIGRATE", "false")
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


@pytest.fixture
async def library_env(database_env: URL) -> AsyncIterator[URL]:
    """`database_env` for async library tests: also disposes the default database afterwards."""
    yield database_env
    await close_default_database()


@pytest.fixture
def alembic_config() -> AlembicConfig:
    """pytest-alembic's built-in tests run the packaged migrations..."""
    return packaged_alembic_config()


@pytest.fixture
def alembic_engine(empty_database_url: URL) -> Iterator[AsyncEngine]:
    """...on an empty database of their own."""
    engine = create_async_engine(empty_database_url, poolclass=NullPool)
    yield engine
    run_async(engine.dispose)
