"""Building the async engine: the pool and connection defaults, and where the URL comes from.

Engines are created at start-up (the API's lifespan, a CLI command, the library's first call),
never at import, and disposed at shutdown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool
from sqlalchemy.util.concurrency import in_greenlet

from tutorials.errors import InvalidInput
from tutorials.settings import Settings, normalize_database_url

#: A connection that sat in the pool at least this long is pinged (one round trip) before use;
#: one used more recently is only checked for a closed socket, which costs nothing.
PING_AFTER_IDLE_SECONDS = 10.0
_IDLE_SINCE = "tutorials_idle_since"
_PING_DUE = "tutorials_ping_due"


def server_settings(settings: Settings) -> dict[str, str]:
    """Per-connection server parameters that bound the damage of one slow or stuck request.

    `jit=off`: PostgreSQL's JIT costs milliseconds of compile time on the small indexed queries
    this service runs and never pays back.
    """
    return {
        "application_name": settings.application_name,
        "statement_timeout": str(settings.statement_timeout_ms),
        "lock_timeout": str(settings.lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.idle_in_transaction_timeout_ms),
        "jit": "off",
    }


def create_engine(url: URL, settings: Settings) -> AsyncEngine:
    """An `AsyncEngine` over asyncpg with the service's pool and connection defaults.

    - stale-connection detection (`settings.pool_pre_ping`, on by default): a server restart
      costs zero failed requests when the pool is idle. SQLAlchemy's own pre-ping costs three
      round trips per checkout on asyncpg (BEGIN; SELECT; ROLLBACK) — more than the statement
      the fast path came for — so it is replaced by `detect_stale_connections`: a free check
      for a socket the server has closed (a restart, `pg_terminate_backend`, a proxy timeout),
      plus a real ping only for a connection that sat idle long enough to have been dropped
      silently. `tests/db/test_engine.py` restarts a real server under an idle pool to prove it.
    - a short `pool_timeout`: exhaustion fails fast (503) instead of hanging a request.
    - `pool_use_lifo`: idle connections beyond the hot few age out via `pool_recycle`.
    - behind PgBouncer (transaction mode) startup parameters and named prepared statements are
      refused, so both are turned off there.
    """
    connect_args: dict[str, Any] = {}
    if "timeout" not in url.query:
        connect_args["timeout"] = settings.connect_timeout
    if settings.statement_timeout_ms > 0 and "command_timeout" not in url.query:
        # A client-side deadline just past the server's: when the network dies under an open
        # connection, the server cannot cancel anything and only this stops the wait (else the
        # OS's TCP timeout, ~15 min). It also holds behind PgBouncer, where startup parameters
        # such as statement_timeout are refused.
        connect_args["command_timeout"] = settings.statement_timeout_ms / 1000 + 1
    if settings.pgbouncer:
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_cache_size"] = 0
    else:
        connect_args["server_settings"] = server_settings(settings)
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=False,  # replaced by detect_stale_connections, below
        pool_use_lifo=True,
        connect_args=connect_args,
    )
    if settings.pool_pre_ping:
        detect_stale_connections(engine, PING_AFTER_IDLE_SECONDS)
    event.listen(engine.sync_engine, "do_connect", _connect_in_a_greenlet_only)
    return engine


class _NeedsGreenlet(exc.MissingGreenlet):
    """A connect attempted outside SQLAlchemy's greenlet: `take_idle_connection` expects it;
    anyone else gets SQLAlchemy's own error type for that mistake."""


def _connect_in_a_greenlet_only(
    dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: Any
) -> None:
    """Refuse to connect outside SQLAlchemy's greenlet (`take_idle_connection`), before the
    driver's `connect()` coroutine is even made: one made and never awaited would be closed
    with a "never awaited" RuntimeWarning. Inside the greenlet, the usual connect proceeds."""
    if not in_greenlet():
        raise _NeedsGreenlet("connecting needs SQLAlchemy's greenlet (greenlet_spawn)")


def detect_stale_connections(
    engine: AsyncEngine, ping_after_idle: float = PING_AFTER_IDLE_SECONDS
) -> None:
    """Make the pool replace dead connections at checkout, paying a round trip only when needed.

    At checkout (inside SQLAlchemy's greenlet, so awaiting is allowed) a connection is refused
    — `DisconnectionError`, which makes the pool discard it and hand out a fresh one (up to
    three times) — when its asyncpg socket is already closed, which is what a server restart
    or a terminated backend leaves behind: the server sends FATAL and closes, and the event
    loop marks the connection closed while it sits idle. A connection idle for at least
    `ping_after_idle` seconds is also pinged, for the cases no FIN ever arrives (a silently
    dropped network path) or the event loop was blocked when it did.
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _remember_idle_start(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _refuse_stale(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise exc.DisconnectionError("connection closed by the server while idle")
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since >= ping_after_idle:
            if not in_greenlet():
                # A checkout outside SQLAlchemy's greenlet (`take_idle_connection`) cannot
                # await a ping here; it leaves the ping to its caller (`ping_if_due`).
                record.info[_PING_DUE] = True
                return
            try:
                dbapi_connection.ping()
            except Exception as error:
                raise exc.DisconnectionError("connection failed its ping") from error


def take_idle_connection(engine: AsyncEngine) -> PoolProxiedConnection | None:
    """An idle connection from the engine's pool, taken without SQLAlchemy's greenlet.

    `AsyncEngine.raw_connection()` runs the pool's checkout in a new greenlet, in case it has to
    await (connect, reconnect, ping); starting one costs ≈ 8 µs of CPU on Python 3.11, more
    than a tenth of a whole `Database.fast` call. An idle connection needs no awaiting in the
    common case, so the checkout runs right here. When it turns out to need some, nothing is
    awaited:

    - a connection to replace (recycled, invalidated, closed by the server) is closed without
      waiting, as SQLAlchemy does outside a greenlet, and its reconnect is refused before it
      starts (`_connect_in_a_greenlet_only`): the pool takes the entry back, as after any
      failed reconnect, and None sends the caller to `raw_connection()`, which reconnects;
    - a ping due after a long idle: the checkout listener leaves it to `ping_if_due`.

    None as well when no connection is idle (waiting or connecting needs the greenlet). Only
    for engines made by `create_engine` (see `takes_idle_connections`): on another engine a
    checkout could await (SQLAlchemy's pre-ping, a reconnect without our guard) and fail.
    """
    pool = engine.pool
    if not isinstance(pool, QueuePool) or pool.checkedin() == 0:
        return None
    try:
        return pool.connect()
    except _NeedsGreenlet:
        return None


def takes_idle_connections(engine: AsyncEngine) -> bool:
    """Whether `take_idle_connection` is safe on this engine: made by `create_engine` (no
    SQLAlchemy pre-ping, reconnects refused outside the greenlet), not a caller's own."""
    return event.contains(engine.sync_engine, "do_connect", _connect_in_a_greenlet_only)


async def ping_if_due(connection: PoolProxiedConnection) -> bool:
    """Ping a connection `take_idle_connection` handed out, if it idled long enough to need it.

    False: it failed the ping (the caller discards it). The ping is one round trip in
    autocommit, since such a connection is never in a transaction.
    """
    if not connection.info.pop(_PING_DUE, False):
        return True
    driver = connection.driver_connection
    assert driver is not None
    try:
        await driver.fetchrow(";")
    except Exception:
        return False
    return True


def resolve_url(settings: Settings) -> URL:
    """`DATABASE_URL` when set; otherwise start (or adopt) the embedded server and use it.

    Blocking: starting the embedded server runs subprocesses. Async callers use `aresolve_url`.
    """
    try:
        url = settings.sqlalchemy_url()
    except ValueError as exc:  # the message never contains the password
        raise InvalidInput(f"DATABASE_URL: {exc}") from None
    if url is not None:
        return url
    from tutorials.db.embedded import EmbeddedPostgres, default_root

    server = EmbeddedPostgres(settings.home or default_root())
    return normalize_database_url(server.start())


async def aresolve_url(settings: Settings) -> URL:
    """`resolve_url` without blocking the event loop."""
    return await asyncio.to_thread(resolve_url, settings)
