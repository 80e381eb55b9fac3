"""Connections: asyncpg's pool for the service, SQLAlchemy's engine for ORM sessions, one set
of connection defaults for both, and where the URL comes from.

Both are made at start-up (the API's lifespan, a CLI command, the library's first call), never
at import, and closed at shutdown. The connection budget is the settings' sum:
`pool_size` connections for the service (every face's reads and writes, bulk transfer) plus
`session_pool_size` for `get_session()` units of work, opened only when one is used.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg

from tutorials.db.url import DatabaseUrl, parse_database_url
from tutorials.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tutorials.settings import Settings


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


#: The timeouts each connection gets as startup parameters, and behind PgBouncer as `SET LOCAL`.
TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


def timeout_values(settings: Settings) -> dict[str, int]:
    """The server-side timeouts the settings ask for, in milliseconds (0: none)."""
    return {
        "statement_timeout": settings.statement_timeout_ms,
        "lock_timeout": settings.lock_timeout_ms,
        "idle_in_transaction_session_timeout": settings.idle_in_transaction_timeout_ms,
    }


def begin_statement(isolation: str, readonly: bool, local: str = "") -> str:
    """`BEGIN` for a transaction, with `SET LOCAL`s (`local`, each `; SET LOCAL ...`) in the same
    simple-protocol message: they cost no round trip more than `BEGIN` alone.

    Used where settings must hold for one transaction only: behind PgBouncer, the timeouts
    (refused there as startup parameters, and in transaction mode a session `SET` would leak to
    whoever gets the server connection next; see `local_timeouts`); and a bounded search's plan
    setting (`repository.CUSTOM_PLAN`). asyncpg's own `Connection.transaction()` cannot send
    them with its BEGIN.
    """
    mode = " READ ONLY" if readonly else ""
    return f"BEGIN ISOLATION LEVEL {_LEVELS[isolation]}{mode}{local}"


def local_timeouts(settings: Settings) -> str:
    """The timeouts as `SET LOCAL`s for `begin_statement`, behind PgBouncer ("" otherwise).

    Single-statement units of work (autocommit) cannot carry them without two more round
    trips: they get the role's or database's defaults (`ALTER ROLE ... SET`), which start-up
    compares with the settings (`tutorials.db.budget.check_timeouts`), and the client-side
    deadline of every unit of work (`unit_deadline`).
    """
    if not settings.pgbouncer:
        return ""
    return "".join(
        f"; SET LOCAL {name} = {value}" for name, value in timeout_values(settings).items()
    )


_LEVELS = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}


#: How much longer than the server's statement timeout the client waits for a unit of work: the
#: server's own timeout, when it can act, answers first with its precise error.
DEADLINE_MARGIN = 1.0


def client_deadline(statement_timeout: float) -> float:
    """The client-side deadline of a unit of work whose statements run under
    `statement_timeout` seconds on the server."""
    return statement_timeout + DEADLINE_MARGIN


def unit_deadline(settings: Settings) -> float | None:
    """The client-side deadline, in seconds, just past the server's `statement_timeout` (None
    when that is off). When the network dies under an open connection the server cannot
    cancel anything, and only a deadline of the client's own stops the wait (else the OS's TCP
    timeout, about 15 minutes). It also holds behind PgBouncer, where startup parameters such
    as `statement_timeout` are refused."""
    if settings.statement_timeout_ms <= 0:
        return None
    return client_deadline(settings.statement_timeout_ms / 1000)


def connect_options(
    url: DatabaseUrl, settings: Settings, *, per_statement_deadline: bool = True
) -> dict[str, Any]:
    """Keyword arguments for `asyncpg.connect`, the same for every connection we open.

    - `timeout`: a connect that does not complete in time fails (503), never hangs.
    - `command_timeout`: `unit_deadline`, for each statement, unless `per_statement_deadline`
      is false: the service's pool (`create_pool`), whose units of work `Database` watches
      as wholes instead, with one timer for all of them.
    - behind PgBouncer (transaction mode), no named prepared statements
      (`statement_cache_size=0` makes asyncpg use unnamed ones) and of the startup parameters
      only `application_name`, the one PgBouncer passes on (it refuses the others): see
      `begin_statement` and `tutorials.db.budget.check_timeouts` for what replaces them.
    """
    options: dict[str, Any] = {"timeout": settings.connect_timeout}
    deadline = unit_deadline(settings)
    if deadline is not None and per_statement_deadline:
        options["command_timeout"] = deadline
    if settings.pgbouncer:
        options["statement_cache_size"] = 0
        options["server_settings"] = {"application_name": settings.application_name}
    else:
        options["server_settings"] = server_settings(settings)
    options.update(url.asyncpg_options())  # what the URL says wins
    return options


async def _keep_session(connection: asyncpg.Connection[Any]) -> None:
    """The pool's `reset`: nothing to undo. asyncpg's default runs `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` (one more round trip) on every
    release; our statements never change session state (settings are `SET LOCAL`, locks are
    transaction-level, temporary tables `ON COMMIT DROP`). A transaction left open, which
    asyncpg rolls back itself before calling this, is rolled back here too if still open."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_pool(
    url: DatabaseUrl, settings: Settings, *, max_size: int | None = None
) -> asyncpg.Pool[Any]:
    """asyncpg's pool for the service: `pool_size` connections at most (opened on demand),
    idle ones closed after `pool_recycle` seconds, no reset round trip on release, and no
    timer per statement: `Database` gives each unit of work its client-side deadline."""
    pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
        url.dsn,
        min_size=0,
        max_size=max_size or settings.pool_size,
        max_inactive_connection_lifetime=settings.pool_recycle,
        reset=_keep_session,
        **connect_options(url, settings, per_statement_deadline=False),
    )
    return pool


def create_engine(url: DatabaseUrl, settings: Settings) -> AsyncEngine:
    """SQLAlchemy's `AsyncEngine` over asyncpg for ORM units of work (`get_session()`) and
    migrations: `session_pool_size` connections, with SQLAlchemy's own pre-ping and the same
    connection defaults as the service's pool, but the client-side deadline per statement
    (`command_timeout`): `Database` does not watch these units of work."""
    from sqlalchemy.ext.asyncio import create_async_engine

    options = connect_options(url, settings)
    if "statement_cache_size" in options:
        options["prepared_statement_cache_size"] = options["statement_cache_size"]
    return create_async_engine(
        url.sqlalchemy_url(),
        pool_size=settings.session_pool_size,
        max_overflow=0,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        pool_use_lifo=True,
        connect_args=options,  # typed values; they win over the URL's strings
    )


def resolve_url(settings: Settings, *, provision: bool = False) -> DatabaseUrl:
    """`DATABASE_URL` when set; otherwise the embedded server's URL.

    The embedded server is started or adopted; only with `provision` (the commands that set it
    up: `tutorials db start`, `tutorials serve`) may that create its system account or copy its
    binaries. Without it (the library, every other command), as root a server that is not
    running raises `EmbeddedPostgresError` saying to run `tutorials db start`.

    Blocking: starting the embedded server runs subprocesses. Async callers use `aresolve_url`.
    """
    try:
        url = settings.database()
    except ValueError as exc:  # the message never contains the password
        raise InvalidInput(f"DATABASE_URL: {exc}") from None
    if url is not None:
        return url
    from tutorials.db.embedded import EmbeddedPostgres, default_root

    server = EmbeddedPostgres(settings.home or default_root())
    return parse_database_url(server.start() if provision else server.attach())


async def aresolve_url(settings: Settings, *, provision: bool = False) -> DatabaseUrl:
    """`resolve_url` without blocking the event loop: in a thread when the embedded server is
    asked (subprocesses, locks), right here for DATABASE_URL (nothing to wait for)."""
    if settings.database_url is not None:
        return resolve_url(settings, provision=provision)
    return await asyncio.to_thread(resolve_url, settings, provision=provision)


def resolve_replicas(settings: Settings) -> list[DatabaseUrl]:
    """`TUTORIALS_REPLICA_URLS` when set; else, with no DATABASE_URL, the embedded server's
    running replicas (`tutorials db start --replicas N`); else none.

    Blocking (the embedded server's files are read): async callers use `aresolve_replicas`.
    """
    try:
        configured = settings.replicas()
    except ValueError as exc:  # the message never contains a password
        raise InvalidInput(f"TUTORIALS_REPLICA_URLS: {exc}") from None
    if configured or settings.database_url is not None:
        return configured
    from tutorials.db.embedded import EmbeddedPostgres, default_root

    server = EmbeddedPostgres(settings.home or default_root())
    return [parse_database_url(url) for url in server.replica_urls()]


async def aresolve_replicas(settings: Settings) -> list[DatabaseUrl]:
    """`resolve_replicas` without blocking the event loop."""
    if settings.replica_urls or settings.database_url is not None:
        return resolve_replicas(settings)  # no files to read
    return await asyncio.to_thread(resolve_replicas, settings)
