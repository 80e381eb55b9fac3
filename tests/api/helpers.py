"""Helpers shared by the API tests."""

from __future__ import annotations

import re

import asyncpg
import httpx
from fastapi import FastAPI
from starlette.routing import Route


async def fetch_rows(dsn: str) -> list[dict[str, object]]:
    """Every tutorial row, read with plain asyncpg behind the app's back."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT tutorial_id, name, url, description, tags, version, updated_at "
            "FROM tutorials ORDER BY tutorial_id"
        )
        return [dict(row) for row in rows]
    finally:
        await connection.close()


async def create(client: httpx.AsyncClient, **fields: object) -> httpx.Response:
    """POST a tutorial (name defaults to "A tutorial") and insist it was created."""
    body = {"name": "A tutorial", **fields}
    response = await client.post("/tutorials", json=body)
    assert response.status_code == 201, response.text
    return response


def route_table(app: FastAPI) -> dict[str, set[str]]:
    """Every path of `app` with its methods: the OpenAPI document's operations (the routers'
    routes, however the framework keeps included routers) and the routes declared on the app
    itself, hidden ones included (the page, /docs, the icons, /openapi.json)."""
    table: dict[str, set[str]] = {}
    for path, operations in app.openapi()["paths"].items():
        table.setdefault(path, set()).update(method.upper() for method in operations)
    for route in app.routes:
        if isinstance(route, Route):  # FastAPI's APIRoute is one too
            table.setdefault(route.path_format, set()).update(route.methods or ())
    return table


def concrete(path: str, samples: dict[str, str]) -> str:
    """`path` with each `{name}` replaced by its sample (a missing sample fails the test)."""

    def sample(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in samples, f"give the test a sample {name!r} for {path}"
        return samples[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", sample, path)
