"""The HTTP baseline: a bare Starlette app with a raw asyncpg pool, no validation, no ORM.

`GET /tutorials/{id}` and `POST /tutorials` doing the same SQL as the service's routes, served
by uvicorn with the same loop and HTTP parser as `tutorials serve` (uvloop, httptools). It is
what the issue calls "a bare Starlette handler": the floor the service is compared with.

    python -m benchmarks.bare_app --dsn postgresql://... --port 8123
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

COLUMNS = "tutorial_id, name, url, description, tags, created_at, updated_at, version"
GET = f"SELECT {COLUMNS} FROM tutorials WHERE tutorial_id = $1"
INSERT = (
    f"INSERT INTO tutorials (name, url, description, tags) VALUES ($1, $2, $3, $4) "
    f"RETURNING {COLUMNS}"
)


def _json(row: asyncpg.Record) -> bytes:
    def default(value: object) -> str:
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(type(value).__name__)

    return json.dumps(dict(row), default=default).encode()


def make_app(dsn: str, pool_size: int) -> Starlette:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
        try:
            yield
        finally:
            await state["pool"].close()

    async def get_one(request: Request) -> Response:
        try:
            tutorial_id = int(request.path_params["tutorial_id"])
        except ValueError:
            return Response(status_code=422)
        async with state["pool"].acquire() as connection:
            row = await connection.fetchrow(GET, tutorial_id)
        if row is None:
            return Response(status_code=404)
        return Response(_json(row), media_type="application/json")

    async def create(request: Request) -> Response:
        body = await request.json()
        async with state["pool"].acquire() as connection:
            row = await connection.fetchrow(
                INSERT, body["name"], body.get("url"), body.get("description"), body.get("tags", [])
            )
        return Response(_json(row), status_code=201, media_type="application/json")

    return Starlette(
        routes=[
            Route("/tutorials/{tutorial_id}", get_one, methods=["GET"]),
            Route("/tutorials", create, methods=["POST"]),
            Route("/readyz", lambda _request: Response("ok"), methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args()
    config = uvicorn.Config(
        make_app(args.dsn, args.pool_size),
        host="127.0.0.1",
        port=args.port,
        access_log=False,
        log_level="warning",
        server_header=False,
        loop="none",
    )
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
