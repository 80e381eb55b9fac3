"""Sessions and the unit of work: the only place that commits.

A `Database` is an engine plus its sessionmaker, made once per process (or per test) and
disposed at shutdown. `Database.session()` is one unit of work: one session, one transaction,
committed when the block ends normally, rolled back on any exception, always closed, and
returning its connection to the pool even when the task is cancelled mid-way. Failures leave it
as domain errors (`tutorials.errors`), classified by SQLSTATE.

`get_session()` is the tutorial's entry point, kept as the public way in: it runs a unit of work
on the process's default database, built lazily from settings on first use.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tutorials.db.engine import aresolve_url, create_engine
from tutorials.errors import RetryableConflict, classify
from tutorials.settings import Settings, get_settings

T = TypeVar("T")


@dataclass
class Database:
    """An engine and the sessionmaker bound to it. Share one per process; never per request."""

    engine: AsyncEngine
    retry_attempts: int = 3
    sessionmaker: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: URL, settings: Settings | None = None) -> Database:
        settings = settings or get_settings()
        return cls(create_engine(url, settings), retry_attempts=settings.retry_attempts)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One unit of work. Commit on success, roll back on error, always close."""
        session = self.sessionmaker()
        try:
            yield session
            await session.commit()
        except BaseException as exc:
            await _shielded(session.rollback())
            domain = classify(exc) if isinstance(exc, Exception) else None
            if domain is not None and domain is not exc:
                raise domain from exc
            raise
        finally:
            await _shielded(session.close())

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in a unit of work, retrying serialization failures and deadlocks.

        The whole unit is re-run (a fresh transaction each time) with jittered exponential
        backoff; after `retry_attempts` tries the last `RetryableConflict` (a 503) escapes.
        """
        for attempt in range(1, self.retry_attempts + 1):
            try:
                async with self.session() as session:
                    return await work(session)
            except RetryableConflict:
                if attempt == self.retry_attempts:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def dispose(self) -> None:
        await self.engine.dispose()


async def _shielded(cleanup: Awaitable[None]) -> None:
    """Finish a rollback/close even if our task is being cancelled, so the connection returns."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def connect(settings: Settings | None = None) -> Database:
    """A new `Database` from settings: DATABASE_URL or the embedded server, migrated if asked.

    Every face starts here: the API's lifespan, each CLI command, the library's first call.
    The caller owns the result and disposes it.
    """
    settings = settings or get_settings()
    database = Database.from_url(await aresolve_url(settings), settings)
    if settings.auto_migrate:
        from tutorials.db.migrate import upgrade

        try:
            await upgrade(database.engine)
        except BaseException:
            await database.dispose()
            raise
    return database


_default: tuple[asyncio.AbstractEventLoop, Database] | None = None


async def default_database() -> Database:
    """The process's database, built from settings on first use and migrated to head if asked.

    An engine's connections belong to the event loop that made them, so a new loop (a second
    `asyncio.run`) gets a new engine.
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
    """Dispose the default database's pool (call at the end of a program using the library)."""
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
