"""Start-up checks of what several processes, replicas and PgBouncer need from the servers.

**The connection budget.** Every process holds, at most, on the primary: `pool_size`
connections for the service, `session_pool_size` for ORM sessions and migrations, and one for
the replica poll when there are replicas; on each replica: `replica_pool_size` and one for its
poll. With `workers` processes, each server must have room for `workers` times that:

    workers x (pool_size + session_pool_size + poll) <= max_connections
                                                       - superuser_reserved_connections
                                                       - reserved_connections (PostgreSQL 16+)
                                                       - connection_reserve

(`connection_reserve`: room left for psql, migrations, monitoring). Past that, a busy moment
ends in "too many clients" errors (503) instead of waiting in the pools, so start-up reads
those settings from each server and warns, naming the pool size that would fit. Behind
PgBouncer the servers' limits are PgBouncer's business (`default_pool_size`,
`max_db_connections`), so the check is skipped.

**Timeouts behind PgBouncer.** There, single-statement units of work run with the role's or
database's own `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout`
(see `engine.begin_statement`); start-up compares them with the settings and, if they differ,
warns with the `ALTER ROLE ... IN DATABASE ... SET` statements that make them agree.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from tutorials.db.engine import TIMEOUTS, connect_options, timeout_values

if TYPE_CHECKING:
    from tutorials.db.database import Connection, Database
    from tutorials.db.url import DatabaseUrl
    from tutorials.settings import Settings

__all__ = ["ServerLimits", "check_budget", "check_timeouts", "primary_need", "replica_need"]

logger = logging.getLogger("tutorials.db")

LIMITS = (
    "SELECT current_setting('max_connections')::int, "
    "current_setting('superuser_reserved_connections')::int, "
    "coalesce(current_setting('reserved_connections', true), '0')::int"
)
DEFAULTS = "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])"


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int
    superuser_reserved: int
    reserved: int

    def room(self, keep_free: int) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved - keep_free


def primary_need(settings: Settings, replicas: bool) -> int:
    """Connections one process may hold on the primary."""
    return settings.pool_size + settings.session_pool_size + (1 if replicas else 0)


def replica_need(settings: Settings) -> int:
    """Connections one process may hold on each replica."""
    return settings.replica_pool_size + 1


def verdict(
    where: str, settings: Settings, limits: ServerLimits, per_process: int, pool: str, pool_of: int
) -> str | None:
    """The warning for one server, or None when the budget fits."""
    workers, room = settings.workers, limits.room(settings.connection_reserve)
    need = workers * per_process
    if need <= room:
        return None
    others = per_process - pool_of
    fits = room // workers - others
    advice = (
        f"lower {pool} to {fits}" if fits >= 1 else "run fewer workers per server"
    ) + ", raise max_connections, or put PgBouncer in front (docs/SCALING.md)"
    return (
        f"connection budget exceeded on the {where}: {workers} worker(s) x {per_process} "
        f"connections = {need}, but max_connections {limits.max_connections} - "
        f"{limits.superuser_reserved} reserved for superusers - {limits.reserved} reserved - "
        f"{settings.connection_reserve} kept free (TUTORIALS_CONNECTION_RESERVE) leaves {room}; "
        f"{advice}"
    )


async def _limits(connection: Connection | asyncpg.Connection[Any]) -> ServerLimits:
    row = await connection.fetchrow(LIMITS)
    assert row is not None
    return ServerLimits(int(row[0]), int(row[1]), int(row[2]))


async def _replica_limits(url: DatabaseUrl, settings: Settings) -> ServerLimits:
    options = connect_options(url, settings)
    connection = await asyncpg.connect(url.dsn, **options)
    try:
        return await _limits(connection)
    finally:
        with contextlib.suppress(Exception):
            await connection.close(timeout=2)


async def check_budget(database: Database) -> list[str]:
    """Warn (and return the warnings) where the processes' pools would not fit a server."""
    settings = database.settings
    if settings.pgbouncer:
        return []
    warnings = []
    limits = await database.read(_limits, primary=True)
    replicas = database.replicas
    message = verdict(
        "primary",
        settings,
        limits,
        primary_need(settings, replicas is not None),
        "TUTORIALS_POOL_SIZE",
        settings.pool_size,
    )
    if message:
        warnings.append(message)
    for number, replica in enumerate(replicas.replicas if replicas else (), start=1):
        try:
            found = await _replica_limits(replica.url, settings)
        except Exception as exc:  # an unreachable replica is readiness's news, not ours
            logger.info("replica %s: budget not checked: %s", number, type(exc).__name__)
            continue
        message = verdict(
            f"replica {number}",
            settings,
            found,
            replica_need(settings),
            "TUTORIALS_REPLICA_POOL_SIZE",
            settings.replica_pool_size,
        )
        if message:
            warnings.append(message)
    for message in warnings:
        logger.warning(message)
    return warnings


async def check_timeouts(database: Database) -> list[str]:
    """Behind PgBouncer: warn (and return the warnings) where the server's defaults for the
    timeouts differ from the settings, with the statements that fix it."""
    settings = database.settings
    if not settings.pgbouncer:
        return []

    async def defaults(connection: Connection) -> tuple[str, str, dict[str, int]]:
        role = await connection.fetchval("SELECT current_user")
        name = await connection.fetchval("SELECT current_database()")
        rows = await connection.fetch(DEFAULTS, list(TIMEOUTS))
        return str(role), str(name), {row[0]: int(row[1]) for row in rows}

    role, name, found = await database.read(defaults, primary=True)
    wanted = timeout_values(settings)
    differ = {key: value for key, value in wanted.items() if found.get(key) != value}
    database.statement_timeouts_hold = not differ
    if not differ:
        return []
    now = ", ".join(f"{key} {found.get(key)} ms" for key in differ)
    fix = " ".join(
        f"ALTER ROLE {_ident(role)} IN DATABASE {_ident(name)} SET {key} = {value};"
        for key, value in differ.items()
    )
    message = (
        "behind PgBouncer, single statements would run with the server's defaults "
        f"({now}), not the settings', so writes pay a transaction each; to make them "
        f"agree run: {fix}"
    )
    logger.warning(message)
    return [message]


def _ident(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'
