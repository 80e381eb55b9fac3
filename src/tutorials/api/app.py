"""The app factory: `create_app(settings, database)` builds the FastAPI application.

The engine is made at start-up, never at import: the lifespan opens the configured database
(DATABASE_URL or the embedded server, migrated when `auto_migrate` is on) and disposes it at
shutdown. Whoever injects a `Database` (tests, the `serve` command) owns it and disposes it.
Per-app state (database, settings-derived values, metrics registry, token guard) lives on
`app.state`, so several apps can live in one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.middleware.cors import CORSMiddleware

from tutorials.api import browse, consistency, docs, health, problems, routes, transfer
from tutorials.api.bodies import StrictJsonMiddleware
from tutorials.api.consistency import ConsistencyMiddleware
from tutorials.api.metrics import HttpMetrics
from tutorials.api.middleware import (
    AllowedHostsMiddleware,
    BodyLimitMiddleware,
    HeadLimitsMiddleware,
    HeadMiddleware,
    RequestContextMiddleware,
)
from tutorials.api.openapi import build
from tutorials.api.security import WriteGuard, WriteGuardMiddleware
from tutorials.db.budget import check_budget, check_timeouts
from tutorials.db.database import Database
from tutorials.db.migrate import head_revision, schema_is_current
from tutorials.db.session import connect
from tutorials.errors import classify
from tutorials.settings import Settings, get_settings

logger = logging.getLogger("tutorials.api")

DESCRIPTION = """\
A catalog of tutorials in PostgreSQL.

Errors are RFC 9457 `application/problem+json`. Writes (POST, PATCH, DELETE) need
`Authorization: Bearer <token>` when the server has tokens configured. Every response carries
`X-Request-ID` (yours, if you sent a plain one). Tutorials carry a strong `ETag` (their
version): send it back in `If-Match` to update or delete only what you read, or in
`If-None-Match` to get a 304 when nothing changed.
"""


#: FastAPI's native telemetry, all off (`Settings.opentelemetry` turns it back on).
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _package_version() -> str:
    try:
        return version("tutorials")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


async def open_database(settings: Settings) -> Database:
    """Connect (DATABASE_URL or embedded, migrating if asked) and prove the database answers.

    Failures leave as domain errors (`Unavailable` for an unreachable server), with the pool
    already disposed. A schema behind the migrations is only a warning: `/readyz` reports it.
    """
    try:
        database = await connect(settings)
    except Exception as exc:
        domain = classify(exc)
        if domain is None:
            raise
        raise domain from exc
    try:
        current = await schema_is_current(database)
        await asyncio.to_thread(head_revision)  # read the scripts once, off the event loop
        await check_budget(database)  # warnings only: see tutorials.db.budget
        await check_timeouts(database)
        if database.replicas is not None:  # route informed from the first request on
            await database.replicas.ready(within=settings.connect_timeout)
    except BaseException as exc:
        await database.dispose()
        domain = classify(exc) if isinstance(exc, Exception) else None
        if domain is None:
            raise
        raise domain from exc
    if not current:
        logger.warning("the database schema is not at the migrations' head; /readyz says 503")
    return database


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    """Build the app. Without `database`, the lifespan opens one from `settings` and closes it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if database is not None:
            app.state.database = database
            yield
            return
        opened = await open_database(settings)
        app.state.database = opened
        try:
            yield
        finally:
            await opened.dispose()

    app = FastAPI(
        title="tutorials",
        version=_package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # tutorials.api.docs serves /docs from shipped files
        redoc_url=None,
        openapi_url="/openapi.json",
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    if database is not None:
        app.state.database = database  # usable even without running the lifespan
    app.state.retry_after_seconds = settings.retry_after_seconds
    app.state.search_candidates = settings.search_candidates
    app.state.ready_timeout = settings.connect_timeout + settings.pool_timeout
    app.state.write_guard = WriteGuard(settings.api_tokens)
    app.state.export_stall_timeout = settings.export_stall_timeout
    app.state.import_batch_bytes = settings.import_batch_bytes
    app.state.import_slots = transfer.ImportSlots(settings.max_concurrent_imports)

    def pool_stats() -> tuple[int, int, int] | None:
        found: Database | None = getattr(app.state, "database", None)
        return found.pool_stats() if found is not None else None

    metrics = HttpMetrics(pool_stats)
    app.state.metrics = metrics

    problems.install(app)
    # The busiest routes first: routing tries each route in order, and no path of one router
    # can match another's (`{tutorial_id:int}` is digits only; import/export are literal).
    app.include_router(routes.router)
    app.include_router(transfer.router)
    app.include_router(browse.router)
    app.include_router(health.router)
    _include_web(app)
    docs.install(app)

    # Added innermost first: a JSON body is checked (strict JSON) only within the body limit;
    # the write guard refuses a write without a token before its body is read (and answers
    # inside CORS, so a browser sees why); the request context wraps
    # everything but HEAD's translation, so it logs the method the client sent.
    # `settings.allowed_hosts` unset means any host here; `tutorials serve` sets the loopback
    # names when it binds a loopback address (the bind is its to know, not the app's).
    if _may_have_replicas(settings, database):
        app.add_middleware(ConsistencyMiddleware)
    app.add_middleware(StrictJsonMiddleware, routes=routes.JSON_BODY_ROUTES)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        path_limits={transfer.IMPORT_PATH: settings.max_import_bytes},
        timeout=settings.body_timeout,
    )
    app.add_middleware(
        WriteGuardMiddleware,
        guard=app.state.write_guard,
        routes=app.routes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "If-None-Match",
                "X-Request-ID",
                consistency.READ_AFTER,
            ],
            expose_headers=[
                "ETag",
                "Location",
                "Retry-After",
                "X-Request-ID",
                consistency.COMMIT,
            ],
            max_age=600,
        )
    # Bounds on the request head, then the host check, right inside the request context (so
    # their refusals carry a request id and are logged and counted like any answer).
    app.add_middleware(
        HeadLimitsMiddleware,
        max_headers=settings.max_headers,
        max_header_bytes=settings.max_header_bytes,
        max_query_params=settings.max_query_params,
    )
    if settings.allowed_hosts is not None and "*" not in settings.allowed_hosts:
        app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_middleware(HeadMiddleware)

    secured = app.state.write_guard.enabled

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, secured=secured)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _may_have_replicas(settings: Settings, database: Database | None) -> bool:
    """Whether reads may be routed to replicas, hence whether the read-your-writes headers
    mean anything (`tutorials.api.consistency`). Without, the app pays nothing for them."""
    if database is not None:
        return database.replicas is not None
    # Opened by the lifespan: replicas configured, or the embedded server's, found then.
    return bool(settings.replica_urls) or settings.database_url is None


def _include_web(app: FastAPI) -> None:
    try:
        from tutorials.web import page
    except ImportError:  # pragma: no cover - the page is optional
        return
    page.install(app)
