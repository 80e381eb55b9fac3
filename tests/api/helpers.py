"""Helpers shared by the API tests."""

from __future__ import annotations

import asyncpg
import httpx


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
