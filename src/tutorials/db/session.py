"""Opening a `Database` from settings, the process's default one, and `get_session()`.

`get_session()` is the tutorial's entry point, kept as the public way in: an
`@asynccontextmanager` yielding an `AsyncSession` in one transaction, committed at the end,
rolled back on error, always closed, and returning its connection when the task is cancelled.
It runs on the process's default database, built lazily from settings on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from tutorials.db.database import Connection, Database
from tutorials.db.engine import aresolve_replicas, aresolve_url
from tutorials.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "Connection",
    "Database",
    "close_default_database",
    "connect",
    "default_database",
    "get_session",
]


async def connect(settings: Settings | None = None) -> Database:
    """A new `Database` from settings: DATABASE_URL or the embedded server, migrated if asked.

    Every face starts here: the API's lifespan, each CLI command, the library's first call.
    The caller owns the result and disposes it.
    """
    settings = settings or get_settings()
    url = await aresolve_url(settings)
    database = Database(url, settings, await aresolve_replicas(settings))
    if settings.auto_migrate:
        from tutorials.db.migrate import upgrade_to_head

        try:
            # at head (nearly always): one read on the service's pool, no SQLAlchemy
            await upgrade_to_head(database)
        except BaseException:
            await database.dispose()
            raise
    return database


_default: tuple[asyncio.AbstractEventLoop, Database] | None = None


async def default_database() -> Database:
    """The process's database, built from settings on first use and migrated to head if asked.

    Connections belong to the event loop that made them, so a new loop (a second
    `asyncio.run`) gets a new `Database`.
    """
    global _default
    loop = asyncio.get_running_loop()
    if _default is not None and _default[0] is loop:
        return _default[1]
    database = await connect()
    if _default is not None and _default[0] is loop:  # another task won the race
        await database.dispose()
        return _default[1]
    _default = (loop, database)
    return database


async def close_default_database() -> None:
    """Close the default database's connections (call before a program's event loop ends)."""
    global _default
    if _default is not None:
        _loop, database = _default
        _default = None
        await database.dispose()


@asynccontextmanager
async def get_session() -> AsyncIterator[AsyncSession]:
    """Yield an `AsyncSession` in one transaction: committed at the end, rolled back on error."""
    database = await default_database()
    async with database.session() as session:
        yield session
