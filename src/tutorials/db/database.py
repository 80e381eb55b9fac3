"""`Database`: units of work on asyncpg's pool, and ORM sessions on SQLAlchemy's engine.

Every face reaches PostgreSQL through one `Database` per process (or per test), made at
start-up and closed at shutdown. It offers units of work of three shapes, all on asyncpg's own
pool through its documented API:

- `read(work)` and `write(work)`: `work` runs on a connection in autocommit, so each statement
  is its own transaction: one round trip, committed when it returns (a 2xx sent afterwards is
  durable). For use cases that are one statement, or statements each correct alone (a
  conditional write, then, only when it matched nothing, a read saying why).
- `transaction(work)`: `work` runs inside one transaction (`connection.transaction()`),
  committed when `work` returns, rolled back when it raises.
- `stream(work)`: like `transaction`, for work that holds its connection for as long as a
  client reads (exports). Streams draw from a budget of their own (`stream_connections`), so
  however many clients stream, reads and writes always find connections.

And `session()`: the ORM unit of work (`get_session()`), on SQLAlchemy's engine, built on first
use, with a pool of its own (`session_pool_size`).

The same guarantees hold for every shape:

- failures leave as domain errors (`tutorials.errors`), classified by SQLSTATE;
- serialization failures and deadlocks (40001, 40P01) re-run the whole unit of work with
  jittered backoff, `retry_attempts` times, then leave as `RetryableConflict` (503);
- a read whose connection died mid-way is retried once on another; a write is not (the server
  may have committed before the connection dropped);
- a caller waits for a connection at most `pool_timeout` seconds, first come first served
  (`Unavailable`, 503, after that);
- a unit of work gets at most `unit_deadline` seconds on its connection (the statement timeout
  plus a second), or the deadline it asks for (an import's batch, an export, a restore): past
  it the connection is closed and the unit fails as `Unavailable`, even when the network died
  and the server can stop nothing (`_Deadlines`: one timer for every unit in progress);
- cancellation returns the connection to the pool (asyncpg shields its release and rolls back
  or closes a connection left mid-statement);
- a connection the server closed while it sat idle is replaced at checkout (asyncpg checks);
  one idle for `PING_AFTER_IDLE` seconds is pinged first, for the network paths that die
  without a word.

**Read replicas** (`replicas`: a `tutorials.db.replicas.ReplicaSet`, only when replica URLs are
configured). Then `read`, `transaction(readonly=True)` and `stream` (exports) go to a replica
that has replayed what this task must see (`tutorials.db.consistency`) and lags at most the
settings' bound; `write` and writing transactions go to the primary, and so does everything
inside them (the work's reads run on the primary's connection). Every write then also reads
its commit LSN (one more round trip, after the commit) for read-your-writes. A replica that
cannot be reached is skipped until its next good poll, and the read runs on the primary. Each
replica has a pool, slots and stream budget of its own (`ServerPool`). Streams started inside
a stream on a replica (the parts of a parallel export, which share its snapshot) stay on it.

With no replicas, none of that runs: `replicas` is None and every unit of work takes exactly
the path it took before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import asyncpg

from tutorials.db import consistency
from tutorials.db.engine import (
    begin_statement,
    client_deadline,
    create_engine,
    create_pool,
    local_timeouts,
    unit_deadline,
)
from tutorials.db.url import DatabaseUrl, parse_database_url
from tutorials.errors import RetryableConflict, TutorialsError, Unavailable, classify

if TYPE_CHECKING:
    from collections.abc import Sequence

    from asyncpg.pool import PoolConnectionProxy
    from asyncpg.transaction import Transaction as PgTransaction
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from tutorials.db.replicas import Replica, ReplicaSet
    from tutorials.settings import Settings

    #: What a unit of work is handed: a connection of asyncpg's pool (its proxy of one).
    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

T = TypeVar("T")
Work: TypeAlias = Callable[[Connection], Awaitable[T]]
Isolation: TypeAlias = Literal["read_committed", "repeatable_read", "serializable"]

#: A connection that sat idle in the pool at least this long is pinged before use.
PING_AFTER_IDLE = 10.0
#: How long `dispose` waits for connections in use to come back before closing them anyway.
_CLOSE_GRACE = 10.0
#: How many pooled connections may fail their ping in a row before a fresh one is opened.
_STALE_ATTEMPTS = 3
#: Read after a write's commit, on its connection: an LSN at or past the commit record. The
#: insert position, not the write position: with `synchronous_commit=off` a commit returns
#: before its record is written out, and the insert position is past it all the same.
COMMIT_POSITION = "SELECT pg_current_wal_insert_lsn()::text"

#: How a unit of work runs: None in autocommit, else (isolation, read only, `SET LOCAL`s).
Transaction: TypeAlias = "tuple[Isolation, bool, str] | None"


class ServerPool:
    """One server's share of the connection budget: asyncpg's pool (opened on demand), the
    slots callers queue for in arrival order, and the stream budget. The primary has one;
    each replica has one."""

    __slots__ = (
        "idle_since",
        "opening",
        "pool",
        "size",
        "slots",
        "stream_connections",
        "stream_slots",
        "url",
    )

    def __init__(
        self, url: DatabaseUrl, size: int, stream_connections: int, pool_timeout: float
    ) -> None:
        self.url = url
        self.size = size
        self.stream_connections = max(1, min(stream_connections, size - 1))
        self.slots = _Turns(size, pool_timeout)
        self.stream_slots = _Turns(self.stream_connections, pool_timeout)
        self.pool: asyncpg.Pool[Any] | None = None
        self.opening: asyncio.Future[asyncpg.Pool[Any]] | None = None
        #: When each connection (by server pid) last went back to the pool.
        self.idle_since: dict[int, float] = {}

    def stats(self) -> tuple[int, int, int]:
        """(connections open, of which idle, the most there may be)."""
        pool = self.pool
        if pool is None:
            return 0, 0, self.size
        return pool.get_size(), pool.get_idle_size(), pool.get_max_size()


class Database:
    """asyncpg's pool for the service, SQLAlchemy's engine for ORM sessions. One per process."""

    def __init__(
        self, url: DatabaseUrl, settings: Settings, replicas: Sequence[DatabaseUrl] = ()
    ) -> None:
        self.url = url
        self.settings = settings
        self.retry_attempts = settings.retry_attempts
        self.pool_timeout = settings.pool_timeout
        self.ping_after_idle = PING_AFTER_IDLE if settings.pool_pre_ping else None
        #: Seconds a unit of work may take on its connection unless it says otherwise: the
        #: client-side deadline for a network that dies under it (`_Deadlines`).
        self.unit_deadline = unit_deadline(settings)
        self._deadlines = _Deadlines()
        self._primary = ServerPool(
            url, settings.pool_size, settings.stream_connections, settings.pool_timeout
        )
        self.stream_connections = self._primary.stream_connections
        #: Behind PgBouncer: transactions begin with `SET LOCAL` of the timeouts (engine.py).
        self._local_timeouts = local_timeouts(settings)
        #: Whether a single statement runs under the settings' timeouts. Behind PgBouncer it
        #: gets the server's defaults instead; until `budget.check_timeouts` finds that they
        #: agree, writes run as transactions whose BEGIN carries the timeouts. Otherwise a
        #: write stuck behind a lock would wait for the client-side deadline, be answered
        #: 503, and could still be applied by the server once the lock went.
        self.statement_timeouts_hold = not settings.pgbouncer
        self.replicas: ReplicaSet | None = None
        if replicas:
            from tutorials.db.replicas import ReplicaSet

            self.replicas = ReplicaSet(self, replicas, settings)
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str | DatabaseUrl | URL,
        settings: Settings | None = None,
        replicas: Sequence[str | DatabaseUrl | URL] = (),
    ) -> Database:
        """A `Database` for a URL (libpq or SQLAlchemy form), and replicas of it if any.
        Nothing connects until used."""
        from tutorials.settings import get_settings

        return cls(_url(url), settings or get_settings(), [_url(each) for each in replicas])

    def __repr__(self) -> str:
        return f"Database({self.url.rendered()!r})"

    # --- Units of work on asyncpg's pool ----------------------------------------------------

    async def read(self, work: Work[T], *, primary: bool = False) -> T:
        """Run `work` in autocommit; retried once on a fresh connection if its connection died.

        With replicas, on one that has replayed what this task must see, unless `primary`
        (a check that must see the primary itself, like readiness).
        """
        if self.replicas is None or primary:
            return await self._run(work, None, idempotent=True)
        return await self._routed(work, None)

    async def write(self, work: Work[T]) -> T:
        """Run `work` in autocommit: each statement commits alone, before this returns.

        Behind PgBouncer, until the server's default timeouts are known to be the settings'
        (`statement_timeouts_hold`), in one transaction that carries them instead.
        """
        if not self.statement_timeouts_hold:
            return await self.transaction(work)
        if self.replicas is None:
            return await self._run(work, None, idempotent=False)
        return await self._run(
            _positioned(work, None, self._in_transaction), None, idempotent=False
        )

    async def transaction(
        self,
        work: Work[T],
        *,
        readonly: bool = False,
        isolation: Isolation = "read_committed",
        local: Mapping[str, str] | None = None,
        statement_timeout: float | None = None,
    ) -> T:
        """Run `work` in one transaction: committed when it returns, rolled back if it raises.

        `local`: server settings for this transaction only (`SET LOCAL`), sent with its BEGIN
        at no extra round trip; names and values are the caller's own constants, never input.
        `statement_timeout`: the seconds this work's statements run under on the server, when
        they are not the settings' (an import's batch, a restore): the client then waits for the
        whole unit that and `DEADLINE_MARGIN` more, instead of `unit_deadline`.
        A read-only transaction may run on a replica (see the module docstring).
        """
        sets = "".join(f"; SET LOCAL {name} = {value}" for name, value in (local or {}).items())
        deadline = None if statement_timeout is None else client_deadline(statement_timeout)
        if self.replicas is not None:
            if readonly:
                return await self._routed(work, (isolation, True, sets), deadline)
            positioned = _positioned(work, (isolation, False, sets), self._in_transaction)
            return await self._run(positioned, None, idempotent=False, deadline=deadline)
        return await self._run(
            work, (isolation, readonly, sets), idempotent=readonly, deadline=deadline
        )

    async def stream(
        self,
        work: Work[T],
        *,
        readonly: bool = True,
        isolation: Isolation = "repeatable_read",
        statement_timeout: float | None = None,
    ) -> T:
        """`transaction` for long work (an export a client reads), within the stream budget.

        At most `stream_connections` streams hold connections at once; one more waits for a
        turn at most `pool_timeout` seconds, then `Unavailable`. A read-only stream may run on
        a replica; the streams it starts then run on the same one. `statement_timeout` as
        for `transaction`: long work gives its own.
        """
        deadline = None if statement_timeout is None else client_deadline(statement_timeout)
        if self.replicas is not None and readonly:
            pinned = _PINNED.get()
            replica = pinned or self.replicas.choose(consistency.required())
            if replica is not None:
                replica.reads += 1
                token = _PINNED.set(replica)
                try:
                    return await self._stream(
                        replica.server, work, (isolation, readonly, ""), deadline
                    )
                except _Unreachable as failure:
                    replica.failed(failure.error.detail)
                    if pinned is not None:  # a part of a stream on that replica: no elsewhere
                        raise failure.error from failure.__cause__
                finally:
                    _PINNED.reset(token)
            self.replicas.primary_reads += 1
        return await self._stream(self._primary, work, (isolation, readonly, ""), deadline)

    async def _stream(
        self, server: ServerPool, work: Work[T], transaction: Transaction, deadline: float | None
    ) -> T:
        await self._admit(server.stream_slots, "no streaming connection became free in time")
        try:
            # Run once: a stream may have sent part of its data before anything failed.
            return await self._once(work, transaction, server, deadline)
        except _ConnectionLost as lost:
            raise lost.error from lost.__cause__
        except _Unreachable as failure:
            if server is not self._primary:
                raise  # the caller tries the primary
            raise failure.error from failure.__cause__
        finally:
            server.stream_slots.release()

    async def _routed(
        self, work: Work[T], transaction: Transaction, deadline: float | None = None
    ) -> T:
        """A read on a replica that has replayed what this task must see, else the primary."""
        replicas = self.replicas
        assert replicas is not None
        replica = _PINNED.get() or replicas.choose(consistency.required())
        if replica is not None:
            replica.reads += 1
            try:
                return await self._run(
                    work, transaction, idempotent=True, server=replica.server, deadline=deadline
                )
            except (_Unreachable, _ConnectionLost) as failure:
                replica.failed(failure.error.detail)
        replicas.primary_reads += 1
        return await self._run(work, transaction, idempotent=True, deadline=deadline)

    async def _run(
        self,
        work: Work[T],
        transaction: Transaction,
        *,
        idempotent: bool,
        server: ServerPool | None = None,
        deadline: float | None = None,
    ) -> T:
        server = server or self._primary
        attempt = 0
        reconnected = False
        while True:
            attempt += 1
            try:
                return await self._once(work, transaction, server, deadline)
            except RetryableConflict:
                if attempt >= self.retry_attempts:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
            except _ConnectionLost as lost:
                if server is not self._primary:
                    raise  # a replica's reads fall back to the primary (`_routed`)
                if not idempotent or reconnected:
                    raise lost.error from lost.__cause__
                reconnected = True
            except _Unreachable as failure:
                if server is not self._primary:
                    raise
                raise failure.error from failure.__cause__

    async def _once(
        self,
        work: Work[T],
        transaction: Transaction,
        server: ServerPool,
        deadline: float | None = None,
    ) -> T:
        await self._admit(server.slots, "no database connection became free in time")
        try:
            pool = server.pool or await self._open_pool(server)
            connection = await self._checkout(pool, server)
            pid = connection.get_server_pid()
            seconds = self.unit_deadline if deadline is None else deadline
            watch = None if seconds is None else self._deadlines.start(connection, seconds)
            try:
                if transaction is None:
                    return await work(connection)
                return await self._in_transaction(connection, work, *transaction)
            except TutorialsError:
                raise  # raised by `work` itself (NotFound, StaleVersion, ...)
            except Exception as exc:
                if isinstance(exc, TimeoutError) and not _closed(connection):
                    # A statement's own client-side deadline (`timeout=`): the network or the
                    # server is gone, and a cancellation request may never get through. Close
                    # the connection rather than wait for one at release.
                    connection.terminate()
                if watch is not None and watch.expired:
                    error = Unavailable(f"the database did not answer within {seconds:g} s")
                    raise _ConnectionLost(error) from exc
                if _closed(connection):
                    error = Unavailable("lost the connection to the database")
                    raise _ConnectionLost(error) from exc
                raise _domain(exc) from exc
            finally:
                if watch is not None:
                    self._deadlines.end(watch)
                if not _closed(connection):
                    self._mark_idle(server, pid)
                await _release(pool, connection, self.settings.connect_timeout)
        finally:
            server.slots.release()

    async def _in_transaction(
        self,
        connection: Connection,
        work: Work[T],
        isolation: Isolation,
        readonly: bool,
        local: str = "",
    ) -> T:
        """`work` in one transaction: committed when it returns, rolled back if it raises.

        asyncpg's `Transaction`, started and ended by hand rather than as a context manager,
        so that a rollback that cannot get through (a dead network, a server that does not
        answer) is bounded: the connection is closed instead, which ends the transaction on the
        server just as well. With `SET LOCAL`s to send (`local`, and the timeouts behind
        PgBouncer) the transaction opens with BEGIN and them in one message (`begin_statement`).
        """
        transaction: PgTransaction | None = None
        local = self._local_timeouts + local
        if local:
            await connection.execute(begin_statement(isolation, readonly, local))
        else:
            transaction = connection.transaction(isolation=isolation, readonly=readonly)
            await transaction.start()
        try:
            result = await work(connection)
        except BaseException as exc:
            await self._roll_back(connection, transaction, exc)
            raise
        if transaction is None:
            await connection.execute("COMMIT")
        else:
            await transaction.commit()
        return result

    async def _roll_back(
        self, connection: Connection, transaction: PgTransaction | None, error: BaseException
    ) -> None:
        if _closed(connection):
            return  # the server rolled back when the connection went
        if isinstance(error, TimeoutError):
            connection.terminate()  # a client-side deadline: nothing would get through either
            return
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                if transaction is not None:
                    await transaction.rollback()
                elif connection.is_in_transaction():
                    await connection.execute("ROLLBACK")
        except (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
            if not _closed(connection):
                connection.terminate()

    async def _admit(self, slots: _Turns, refusal: str) -> None:
        """Wait for a slot, in arrival order, at most `pool_timeout` seconds.

        A slot held means asyncpg's pool has a connection (or room to open one) for us, so its
        own queue never makes anyone wait. Queueing here rather than there is fair: `_Turns`
        serves waiters in order, while a queue hands a returned connection to whoever asks
        first, and under load a few unlucky callers would starve into the timeout.
        """
        if not slots.take() and not await slots.wait():
            raise Unavailable(refusal)

    async def _checkout(self, pool: asyncpg.Pool[Any], server: ServerPool) -> Connection:
        """A connection from the pool; one idle long enough to have been dropped silently is
        pinged first, and replaced if it does not answer."""
        for _ in range(_STALE_ATTEMPTS):
            try:
                connection: Connection = await pool.acquire()
            except Exception as exc:
                raise _Unreachable(_connect_error(exc)) from exc
            if self.ping_after_idle is None:
                return connection
            idle_since = server.idle_since.pop(connection.get_server_pid(), None)
            if idle_since is None or time.monotonic() - idle_since < self.ping_after_idle:
                return connection
            try:
                await connection.execute(";", timeout=self.settings.connect_timeout)
            except BaseException as exc:
                if not _closed(connection):
                    connection.terminate()  # the pool opens a new one in its place
                await _release(pool, connection, self.settings.connect_timeout)
                if not isinstance(exc, Exception):
                    raise  # cancelled while pinging
                continue
            return connection
        raise _Unreachable(Unavailable("cannot reach the database"))

    def _mark_idle(self, server: ServerPool, pid: int) -> None:
        idle = server.idle_since
        now = idle[pid] = time.monotonic()
        if len(idle) > 2 * server.size + 8:
            # Connections the pool closed since (idle too long, replaced) leave entries behind.
            horizon = now - self.settings.pool_recycle
            server.idle_since = {pid: at for pid, at in idle.items() if at > horizon}

    async def _open_pool(self, server: ServerPool) -> asyncpg.Pool[Any]:
        if self._closed:
            raise Unavailable("the database has been closed")
        if server.opening is None:
            opening = create_pool(server.url, self.settings, max_size=server.size)
            server.opening = asyncio.ensure_future(opening)
        try:
            server.pool = await asyncio.shield(server.opening)
        except BaseException:
            if server.opening.done():
                server.opening = None  # let the next caller try again
            raise
        if self.replicas is not None and server is self._primary:
            self.replicas.start()  # the polls start with the first use of the database
        return server.pool

    # --- ORM sessions on SQLAlchemy's engine -----------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """SQLAlchemy's engine (ORM sessions, migrations), made on first use."""
        if self._engine is None:
            self._engine = create_engine(self.url, self.settings)
        return self._engine

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One ORM unit of work: committed on success, rolled back on error, always closed,
        and returning its connection even when the task is cancelled mid-way."""
        if self._sessionmaker is None:
            from sqlalchemy.ext.asyncio import async_sessionmaker

            self._sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        session = self._sessionmaker()
        try:
            yield session
            await session.commit()
            if self.replicas is not None:
                await _note_session_commit(session)
        except BaseException as exc:
            await _shielded(session.rollback())
            domain = classify(exc) if isinstance(exc, Exception) else None
            if domain is not None and domain is not exc:
                raise domain from exc
            raise
        finally:
            await _shielded(session.close())

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in an ORM unit of work, re-running it on serialization failures and
        deadlocks like the other shapes."""
        for attempt in range(1, self.retry_attempts + 1):
            try:
                async with self.session() as session:
                    return await work(session)
            except RetryableConflict:
                if attempt == self.retry_attempts:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- State --------------------------------------------------------------------------------

    def pool_stats(self) -> tuple[int, int, int]:
        """(connections open, of which idle, the most there may be) in the service's pool."""
        return self._primary.stats()

    async def dispose(self) -> None:
        """Close every pool: wait for connections in use to come back, then close them."""
        self._closed = True
        if self.replicas is not None:
            await self.replicas.close()
        await close_server(self._primary)
        if self._engine is not None:
            await self._engine.dispose()

    close = dispose


async def _release(pool: asyncpg.Pool[Any], connection: Connection, bound: float) -> None:
    """Give a connection back, waiting at most `bound` seconds for a cancelled statement to stop.

    Without a bound, on a dead network, the release (and the pool slot) would wait for the
    operating system's TCP timeout: for a cancellation that cannot reach the server, or for the
    server's goodbye when the pool closes the connection rather than keep it (`max_queries`
    reached, `expire_connections`). The unit's own deadline cannot end that wait on every
    asyncpg release this project admits (terminating the connection does not on 0.31), so the
    bound stays. When it is reached asyncpg closes the connection itself, and the pool opens a
    new one later: nothing for the caller to do.
    """
    with contextlib.suppress(TimeoutError, asyncpg.InterfaceError, OSError):
        await pool.release(connection, timeout=bound)


async def close_server(server: ServerPool) -> None:
    """Close one server's pool: connections in use get `_CLOSE_GRACE` seconds to come back."""
    pool, server.pool = server.pool, None
    if pool is None and server.opening is not None and not server.opening.cancelled():
        try:
            pool = await asyncio.shield(server.opening)
        except Exception:
            pool = None  # it never opened: nothing to close
    if pool is not None:
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await pool.close()
        except TimeoutError:
            pool.terminate()


def _url(url: str | DatabaseUrl | URL) -> DatabaseUrl:
    if isinstance(url, str):
        return parse_database_url(url)
    if isinstance(url, DatabaseUrl):
        return url
    return parse_database_url(url.render_as_string(hide_password=False))


#: The replica a stream of this context runs on: the streams it starts stay there.
_PINNED: ContextVar[Replica | None] = ContextVar("tutorials_pinned_replica", default=None)


def _positioned(
    work: Work[T],
    transaction: Transaction,
    in_transaction: Callable[[Connection, Work[T], Isolation, bool, str], Awaitable[T]],
) -> Work[T]:
    """`work` (in its transaction, if any), then its commit LSN noted for read-your-writes."""

    async def run(connection: Connection) -> T:
        if transaction is None:
            result = await work(connection)
        else:
            result = await in_transaction(connection, work, *transaction)
        # Committed. The LSN is asked afterwards, on the same connection: a failure here
        # cannot undo the write, so it only makes this task read from the primary.
        try:
            position = await connection.fetchval(COMMIT_POSITION)
        except Exception:
            consistency.note_commit(None)
        else:
            consistency.note_commit(consistency.parse_lsn(position))
        return result

    return run


async def _note_session_commit(session: AsyncSession) -> None:
    """After an ORM unit of work committed: its LSN for read-your-writes, from the WAL's
    insert position (any connection to the primary will do: the commit is behind it)."""
    try:
        connection = await session.connection()
        position = (await connection.exec_driver_sql(COMMIT_POSITION)).scalar()
    except Exception:
        consistency.note_commit(None)
    else:
        consistency.note_commit(consistency.parse_lsn(str(position)))


class _Turns:
    """`size` slots handed out first come, first served; a wait ends after `timeout` seconds.

    An `asyncio.Semaphore` with an `asyncio.timeout` around each wait would do the same, but
    arms and cancels one timer per waiting caller, which under load is a measurable share of
    a one-statement unit of work (benchmarks/RESULTS.md). Every caller waits the same
    `timeout`, so deadlines fall in arrival order and one timer, armed for the oldest waiter,
    serves the whole queue. A slot freed while callers wait goes straight to the first of
    them, so no newcomer can take it first.
    """

    __slots__ = ("_free", "_timeout", "_timer", "_waiters")

    def __init__(self, size: int, timeout: float) -> None:
        self._free = size
        self._timeout = timeout
        #: (deadline, future) per waiting caller, oldest first; a future's result says
        #: whether it was handed a slot (True) or its time ran out (False).
        self._waiters: deque[tuple[float, asyncio.Future[bool]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def locked(self) -> bool:
        """Whether a caller asking now would have to wait (as `asyncio.Semaphore.locked`)."""
        return not self._free or bool(self._waiters)

    def take(self) -> bool:
        """Take a free slot if one is free and nobody waits for it (without suspending)."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> bool:
        """Wait in line for a slot: True once it is ours, False if `timeout` passed first."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        deadline = loop.time() + self._timeout
        self._waiters.append((deadline, turn))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self.release()  # handed a slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the first caller still waiting, else to the free ones."""
        waiters = self._waiters
        while waiters:
            _deadline, turn = waiters.popleft()
            if not turn.done():  # not cancelled, not timed out
                turn.set_result(True)
                return
        self._free += 1

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Time out the callers whose deadline has come; arm the timer for the next one."""
        self._timer = None
        waiters = self._waiters
        now = loop.time()
        while waiters and (waiters[0][0] <= now or waiters[0][1].done()):
            _deadline, turn = waiters.popleft()
            if not turn.done():
                turn.set_result(False)
        if waiters:
            self._timer = loop.call_at(waiters[0][0], self._expire, loop)


class _Watch:
    """One unit of work under `_Deadlines`: its connection and when its time is up."""

    __slots__ = ("connection", "deadline", "expired")

    def __init__(self, connection: Connection, deadline: float) -> None:
        self.connection = connection
        self.deadline = deadline
        self.expired = False


class _Deadlines:
    """The client-side deadlines of the units of work in progress, all served by one timer.

    When the network dies under an open connection, the server can cancel nothing and nothing
    more arrives: only a deadline of the client's own ends the wait (else the operating
    system's, about 15 minutes). asyncpg's `command_timeout` gives one per statement by arming
    and cancelling a timer for each, the largest single cost the library added to asyncpg's
    on its hot paths (benchmarks/RESULTS.md). Here a unit of work is noted when it starts and
    forgotten when it ends, and one timer, armed for the earliest deadline, terminates the
    connection of a unit still running past its own: the unit then fails as one whose
    connection was lost (`Unavailable`; a read is retried once on a fresh connection).
    """

    __slots__ = ("_loop", "_running", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._running: set[_Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def start(self, connection: Connection, seconds: float) -> _Watch:
        """Watch a unit of work on `connection` for `seconds` from now."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (asyncio.run again): start afresh
            self._loop, self._running, self._timer, self._timer_at = loop, set(), None, math.inf
        watch = _Watch(connection, loop.time() + seconds)
        self._running.add(watch)
        if watch.deadline < self._timer_at:
            self._arm(loop, watch.deadline)
        return watch

    def end(self, watch: _Watch) -> None:
        """The unit of work ended (the timer, if it fires, finds nothing to do)."""
        self._running.discard(watch)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._expire, loop)
        self._timer_at = at

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Terminate the connections of the units past their deadline; arm for the next."""
        if loop is not self._loop:
            return  # a timer of an event loop this database no longer runs on
        self._timer, self._timer_at = None, math.inf
        now = loop.time()
        for watch in [watch for watch in self._running if watch.deadline <= now]:
            self._running.discard(watch)
            watch.expired = True
            if not _closed(watch.connection):
                watch.connection.terminate()
        if self._running:
            self._arm(loop, min(watch.deadline for watch in self._running))


def _closed(connection: Connection) -> bool:
    """Whether the connection died: closed, or already handed back by asyncpg, which releases
    a pool connection the moment it closes (and then refuses every call on it)."""
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:
        return True


class _ConnectionLost(Exception):
    """Internal: the connection died during a unit of work; carries the domain error."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.detail)
        self.error = error


class _Unreachable(Exception):
    """Internal: no connection could be had from the server (refused, down, too many
    connections); carries the domain error. A replica's read then goes to the primary."""

    def __init__(self, error: TutorialsError) -> None:
        super().__init__(error.detail)
        self.error = error


def _domain(error: Exception) -> Exception:
    """The domain error for a failure on asyncpg's path, or the error itself (a bug)."""
    domain = classify(error)
    if domain is not None:
        return domain
    return error


def _connect_error(error: Exception) -> TutorialsError:
    """The domain error for a failure to get a connection (`Unavailable` unless classified)."""
    return classify(error) or Unavailable("cannot reach the database")


async def _shielded(cleanup: Awaitable[None]) -> None:
    """Finish a rollback/close even if our task is being cancelled, so the connection returns."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
