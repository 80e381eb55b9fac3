"""Sessions and the unit of work: the only place that commits.

A `Database` is an engine plus its sessionmaker, made once per process (or per test) and
disposed at shutdown. `Database.session()` is one unit of work: one session, one transaction,
committed when the block ends normally, rolled back on any exception, always closed, and
returning its connection to the pool even when the task is cancelled mid-way. Failures leave it
as domain errors (`tutorials.errors`), classified by SQLSTATE.

`get_session()` is the tutorial's entry point, kept as the public way in: it runs a unit of work
on the process's default database, built lazily from settings on first use.

`Database.fast(work)` is the other way in, for units of work that are one statement (the
library's and the API's hot paths): a connection from the SAME pool (same limits, timeouts,
server settings, stale-connection detection), used through asyncpg directly in autocommit, so
the statement is its own transaction: one round trip instead of BEGIN + statement + COMMIT, and
none of the ORM's per-call CPU. Measured: see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from tutorials.db.engine import (
    aresolve_url,
    create_engine,
    ping_if_due,
    take_idle_connection,
    takes_idle_connections,
)
from tutorials.errors import (
    InvalidInput,
    RetryableConflict,
    TutorialsError,
    Unavailable,
    classify,
)
from tutorials.settings import Settings, get_settings

#: The connection `Database.fast` hands to its work: asyncpg's, with plain `Record` rows.
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]
else:
    Connection = asyncpg.Connection

T = TypeVar("T")


@dataclass
class Database:
    """An engine and the sessionmaker bound to it. Share one per process; never per request."""

    engine: AsyncEngine
    retry_attempts: int = 3
    #: How many `fast` calls may hold a connection at once (the pool's size plus overflow).
    #: Callers beyond it queue here, first come first served, for at most `pool_timeout`
    #: seconds; None leaves the waiting to the pool alone. See `_admit`.
    capacity: int | None = None
    pool_timeout: float = 30.0
    sessionmaker: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._acquiring = 0  # tasks inside `fast` waiting for the pool itself
        self._sessions = 0  # ORM units of work open (they take connections past `_slots`)
        self._slots = asyncio.Semaphore(self.capacity) if self.capacity else None
        #: Idle connections are taken without a greenlet only from engines made for that.
        self._take_idle = takes_idle_connections(self.engine)
        self._disposed = False

    @classmethod
    def from_url(cls, url: URL, settings: Settings | None = None) -> Database:
        settings = settings or get_settings()
        return cls(
            create_engine(url, settings),
            retry_attempts=settings.retry_attempts,
            capacity=settings.pool_size + max(settings.max_overflow, 0),
            pool_timeout=settings.pool_timeout,
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One unit of work. Commit on success, roll back on error, always close."""
        session = self.sessionmaker()
        self._sessions += 1
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
            self._sessions -= 1
            busy = self._busy()
            await _shielded(session.close())
        if busy:
            await asyncio.sleep(0)  # let a task waiting for a connection have ours: see `fast`

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

    async def fast(
        self, work: Callable[[Connection], Awaitable[T]], *, idempotent: bool = False
    ) -> T:
        """Run `work` on a pooled asyncpg connection in autocommit: each statement commits alone.

        For a unit of work that is one statement, or whose statements are each correct on their
        own (an UPDATE, then — only when it matched nothing — a SELECT saying why). The
        connection comes from the engine's pool and goes back to it; `work` must not keep it,
        nor change session state (SET, LISTEN, temp tables). An explicit transaction is
        possible with `async with connection.transaction():`.

        The same guarantees as `run`: failures leave as domain errors classified by SQLSTATE;
        serialization failures and deadlocks are retried with backoff (`retry_attempts`);
        cancellation returns the connection's slot to the pool (the connection itself is
        closed, since asyncpg cannot reuse one cancelled mid-statement). With `idempotent`
        (reads), a connection lost mid-call is retried once on a fresh one; writes are not
        retried, since the server may have committed before the connection dropped.
        """
        attempt = 0
        reconnected = False
        while True:
            attempt += 1
            try:
                return await self._fast_once(work)
            except RetryableConflict:
                if attempt >= self.retry_attempts:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
            except _ConnectionLost as lost:
                if not idempotent or reconnected:
                    raise lost.error from lost.__cause__
                reconnected = True

    async def _fast_once(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        slots = self._slots
        if slots is not None:
            await self._admit(slots)
        try:
            return await self._fast_checked_out(work)
        finally:
            if slots is not None:
                slots.release()

    async def _admit(self, slots: asyncio.Semaphore) -> None:
        """Wait for one of `capacity` slots, in arrival order, at most `pool_timeout` seconds.

        Queueing here rather than inside the pool is cheaper (a future, not SQLAlchemy's
        greenlet hop and a `wait_for` task per waiting checkout) and fair: asyncio's semaphore
        is FIFO, so a task that releases and asks again at once goes behind those already
        waiting, and nobody starves into the pool timeout under load. A slot held means the
        pool has a connection for us, unless ORM units of work are holding some.
        """
        if not slots.locked():
            await slots.acquire()  # free: taken without suspending
            return
        try:
            async with asyncio.timeout(self.pool_timeout):
                await slots.acquire()
        except TimeoutError:
            raise Unavailable("no database connection became free in time") from None

    async def _checkout(self) -> PoolProxiedConnection:
        """A connection from the pool: an idle one directly, else through SQLAlchemy's greenlet
        (which waits for one, connects, or replaces a stale one)."""
        proxied = take_idle_connection(self.engine) if self._take_idle else None
        if proxied is not None:
            healthy = False
            try:
                healthy = await ping_if_due(proxied)
            finally:
                if not healthy:  # failed its ping, or cancelled mid-ping (state unknown)
                    await _shielded(greenlet_spawn(_check_in, proxied, True))
            if healthy:
                return proxied
        self._acquiring += 1
        try:
            return await self.engine.raw_connection()
        except Exception as exc:
            raise _translate(exc, connecting=True) from exc
        finally:
            self._acquiring -= 1

    async def _fast_checked_out(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        proxied = await self._checkout()
        connection: Connection | None = proxied.driver_connection
        assert connection is not None
        reusable = False
        try:
            result = await work(connection)
            reusable = True
        except TutorialsError:
            reusable = True  # raised by `work` itself (NotFound, StaleVersion, ...)
            raise
        except Exception as exc:
            if connection.is_closed():
                error = Unavailable("lost the connection to the database")
                raise _ConnectionLost(error) from exc
            # The server refused the statement: the connection itself is fine.
            reusable = isinstance(exc, asyncpg.PostgresError)
            domain = _translate(exc)
            if domain is exc:
                raise
            raise domain from exc
        finally:
            # A connection in an unknown state (cancelled mid-statement, an unexpected client
            # error, a transaction left open) is closed, not reused. Check-in runs inside
            # SQLAlchemy's greenlet, since closing a connection awaits the driver.
            discard = not reusable or connection.is_closed() or connection.is_in_transaction()
            busy = self._busy()
            if discard or self._disposed or self._pool_is_full():
                # The check-in will await (closing this connection, an overflow one the pool
                # has no room for, or one whose pool `dispose` replaced): shielded, so
                # cancellation cannot stop the pool slot from coming back.
                await _shielded(greenlet_spawn(_check_in, proxied, discard))
            else:
                # The common case: the connection goes back into the pool's queue, which never
                # awaits (no SQLAlchemy transaction is open on it, so the reset is a no-op, and
                # the queue has room), so it runs right here: no suspension point for a
                # cancellation to land on, no shield task (≈ 60 µs) and no greenlet (≈ 8 µs,
                # measured) either.
                _check_in(proxied, False)
        if busy:
            # Fairness towards tasks waiting in the pool itself (ORM units of work, or `fast`
            # calls when those hold connections). Returning the connection woke the task that
            # has waited longest, but the pool's queue hands a connection to whoever asks
            # first, and our caller may ask again right away: without this yield it takes the
            # connection back, the woken waiter goes to the back of the line, and under load a
            # few unlucky tasks starve into the pool timeout (measured: p99 70 ms and max
            # 260 ms instead of 16 / 36 ms at 32 tasks on 20 connections; see
            # benchmarks/RESULTS.md). `fast` calls among themselves are kept in turn by
            # `_slots`, without this extra pass through the event loop.
            await asyncio.sleep(0)
        return result

    def _pool_is_full(self) -> bool:
        """True unless the engine's pool has room to keep one more idle connection."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return True  # NullPool and others close on check-in
        return pool.checkedin() >= pool.size()

    def _busy(self) -> bool:
        """Some task may be waiting in the pool for our connection: one is inside `fast`
        waiting for the pool, or an ORM unit of work is open (it may be waiting), or, without
        `_slots`, any other connection is in use. Otherwise (`fast` calls alone, or nobody
        else) there is no one in the pool's queue to yield to, and the yield is skipped."""
        if self._acquiring or self._sessions:
            return True
        if self._slots is not None:
            return False
        pool = self.engine.pool
        return isinstance(pool, QueuePool) and pool.checkedout() > 1

    async def dispose(self) -> None:
        self._disposed = True  # calls still running return their connections in a greenlet
        await self.engine.dispose()


def _check_in(proxied: PoolProxiedConnection, discard: bool) -> None:
    if discard:
        proxied.invalidate()
    proxied.close()


class _ConnectionLost(Exception):
    """Internal: the connection died during `Database.fast`; carries the domain error."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.detail)
        self.error = error


def _translate(error: Exception, *, connecting: bool = False) -> Exception:
    """The domain error for a failure on the fast path, or the error itself (a bug).

    While connecting, SQLAlchemy hands asyncpg's connect errors over in its DBAPI adapter's
    wrapper, not in `DBAPIError`: a refused or timed-out connect is found on the cause chain.
    """
    domain = classify(error)
    if domain is not None:
        return domain
    if isinstance(error, asyncpg.exceptions.DataError | asyncpg_base.DataError):
        # A value refused while encoding it (asyncpg raises its SQLSTATE-22000 class for an int
        # beyond bigint, before anything is sent) or another data exception (class 22).
        return InvalidInput("the database refused the value")
    cause: BaseException | None = error if connecting else None
    while cause is not None:
        if isinstance(cause, OSError | asyncio.TimeoutError | asyncpg_base.InterfaceError):
            return Unavailable("cannot reach the database")
        cause = cause.__cause__
    return error


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
