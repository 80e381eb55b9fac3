"""Building the async engine: the pool and connection defaults, and where the URL comes from.

Engines are created at start-up (the API's lifespan, a CLI command, the library's first call),
never at import, and disposed at shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tutorials.settings import Settings, normalize_database_url


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

    - `pool_pre_ping`: a server restart costs zero failed requests when the pool is idle.
    - a short `pool_timeout`: exhaustion fails fast (503) instead of hanging a request.
    - `pool_use_lifo`: idle connections beyond the hot few age out via `pool_recycle`.
    - behind PgBouncer (transaction mode) startup parameters and named prepared statements are
      refused, so both are turned off there.
    """
    connect_args: dict[str, Any] = {}
    if "timeout" not in url.query:
        connect_args["timeout"] = settings.connect_timeout
    if settings.pgbouncer:
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_cache_size"] = 0
    else:
        connect_args["server_settings"] = server_settings(settings)
    return create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        pool_use_lifo=True,
        connect_args=connect_args,
    )


def resolve_url(settings: Settings) -> URL:
    """`DATABASE_URL` when set; otherwise start (or adopt) the embedded server and use it.

    Blocking: starting the embedded server runs subprocesses. Async callers use `aresolve_url`.
    """
    url = settings.sqlalchemy_url()
    if url is not None:
        return url
    from tutorials.db.embedded import EmbeddedPostgres, default_root

    server = EmbeddedPostgres(settings.home or default_root())
    return normalize_database_url(server.start())


async def aresolve_url(settings: Settings) -> URL:
    """`resolve_url` without blocking the event loop."""
    return await asyncio.to_thread(resolve_url, settings)
