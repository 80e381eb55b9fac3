"""The tuned HTTP limit: bare Starlette routes on a tuned asyncpg pool, orjson, nothing else.

What `tutorials serve` is measured against (`httpbench.py`): the least a server can do to give
the same answers on the two benchmarked paths, and not a service anyone should ship.

- **The same work in the database.** `GET /tutorials/{id}` and `POST /tutorials` send the very
  statements the service sends (`tutorials.repository.GET` / `INSERT`) to the same table, each
  in autocommit as the service runs them: one round trip per request once the connection has
  prepared the statement (asyncpg's statement cache), nothing before or after it.
- **The pool tuned.** `asyncpg.create_pool(min_size=20, max_size=20, reset=<no-op>)`: every
  connection opened at start-up, and releasing one costs nothing (asyncpg's default reset sends
  `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`, a round trip per
  request; these statements leave no session state to undo). No ping, no timeout, no queue.
- **The same answer on the wire.** 200 / 201 with the row as the service renders it (the same
  keys, UTC times with `Z`), its `ETag` (the version) and, for a created row, its `Location`;
  `X-Content-Type-Options: nosniff` and `Cache-Control: no-cache` as JSON answers carry. Serialised
  by orjson straight from the record. Off the benchmarked paths it still answers like the
  service (404 / 409 / 422 as `application/problem+json`), so a run that goes wrong shows up as
  failures instead of fast 500s, but with no more than a fixed body.
- **The server tuned.** uvicorn with uvloop and httptools, no access log, no `Server` header; no
  middleware, no validation beyond what the SQL needs, no logging.

With `--service-transport` it is the ceiling of any design that ships what the service ships
around its routes: uvicorn's h11 parser (the one that bounds a request head while reading it,
README "Bounds") and the service's JSON access line per request (`tutorials.api.logs`, the
same fields, through `logging`), and still nothing else.

    python -m benchmarks.bare_app --dsn postgresql://... --port 8123 [--service-transport]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tutorials.repository import GET, INSERT

JSON = "application/json"
PROBLEM = "application/problem+json"
#: What every JSON answer of the service carries besides its type.
HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-cache"}
#: `datetime` in UTC as `...Z`, the way the service's models render it.
DUMP_OPTIONS = orjson.OPT_UTC_Z
BIGINT = 2**63 - 1


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """The pool's `reset=`: nothing to undo (these statements leave no session state)."""
    return None


def _problem(status: int, title: str) -> Response:
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status})
    return Response(body, status_code=status, media_type=PROBLEM, headers=HEADERS)


def _row(row: asyncpg.Record, status: int, location: str | None = None) -> Response:
    headers = {**HEADERS, "etag": f'"{row["version"]}"'}
    if location is not None:
        headers["location"] = location
    body = orjson.dumps(dict(row), option=DUMP_OPTIONS)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def make_app(dsn: str, pool_size: int) -> Starlette:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            dsn, min_size=pool_size, max_size=pool_size, reset=_no_reset
        )
        try:
            yield
        finally:
            await state["pool"].close()

    async def get_one(request: Request) -> Response:
        tutorial_id: int = request.path_params["tutorial_id"]  # digits only: `{...:int}`
        if not 1 <= tutorial_id <= BIGINT:
            return _problem(422, "Unprocessable Content")
        row = await state["pool"].fetchrow(GET, tutorial_id)
        if row is None:
            return _problem(404, "Not Found")
        return _row(row, 200)

    async def create(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            values = (body["name"], body.get("url"), body.get("description"), body.get("tags", []))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return _problem(422, "Unprocessable Content")
        try:
            row = await state["pool"].fetchrow(INSERT, *values)
        except asyncpg.UniqueViolationError:
            return _problem(409, "Conflict")
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            return _problem(422, "Unprocessable Content")
        return _row(row, 201, f"/tutorials/{row['tutorial_id']}")

    return Starlette(
        routes=[
            Route("/tutorials/{tutorial_id:int}", get_one, methods=["GET"]),
            Route("/tutorials", create, methods=["POST"]),
            Route("/readyz", lambda _request: Response("ok"), methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def with_access_line(app: ASGIApp) -> ASGIApp:
    """`app`, writing the service's access line for each request (`write_access_line`, as
    `tutorials.api.middleware.RequestContextMiddleware` does, without its request id, metrics
    or default headers)."""
    from tutorials.api.middleware import CLIENT_CLOSED, write_access_line

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started_at = time.perf_counter()
        status = CLIENT_CLOSED

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started_at
            route = getattr(scope.get("route"), "path_format", None)
            write_access_line(scope, scope["method"], route, status, seconds)

    return logged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument(
        "--service-transport",
        action="store_true",
        help="h11 and the service's JSON access log: the ceiling of the service's shipped choices",
    )
    args = parser.parse_args()
    app: ASGIApp = make_app(args.dsn, args.pool_size)
    if args.service_transport:
        from tutorials.api.logs import configure_logging

        configure_logging("info", "json")
        app = with_access_line(app)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        http="h11" if args.service_transport else "httptools",
        access_log=False,
        log_level="warning",
        server_header=False,
        loop="none",  # uvloop.run below
    )
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
