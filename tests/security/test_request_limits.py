"""Defaults bound the damage one request can do: a body size limit, a statement timeout (and
lock and idle-in-transaction timeouts) on every connection, a short pool wait, a page size cap.

Checked on the defaults themselves (no setting overridden) and where they take effect: the
server-side settings are read back with SHOW on connections of every shape of unit of work,
and the HTTP limits are probed on an app built with default settings.
"""

from __future__ import annotations

import json

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from tutorials.api import create_app
from tutorials.db.database import Connection
from tutorials.db.session import Database
from tutorials.schemas import PAGE_MAX
from tutorials.settings import Settings

MIB = 1024 * 1024


def defaults() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_defaults_are_bounded() -> None:
    settings = defaults()
    assert 0 < settings.max_body_bytes <= MIB
    assert 0 < settings.statement_timeout_ms <= 60_000
    assert 0 < settings.lock_timeout_ms <= settings.statement_timeout_ms
    assert 0 < settings.idle_in_transaction_timeout_ms <= 10 * 60_000
    assert 0 < settings.pool_timeout <= 5
    assert 0 < settings.connect_timeout <= 10
    # The connection budget: the service's pool plus the ORM sessions' pool.
    assert settings.pool_size + settings.session_pool_size <= 100
    assert settings.stream_connections < settings.pool_size
    assert settings.retry_attempts <= 5
    assert PAGE_MAX <= 100
    assert settings.host == "127.0.0.1"


async def test_every_connection_carries_the_server_side_limits(database_url: URL) -> None:
    """On every shape of unit of work: the service's (asyncpg's pool) and ORM sessions."""
    settings = defaults()
    database = Database.from_url(database_url, settings)
    names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")

    async def through_session(session: AsyncSession) -> list[str]:
        return [str((await session.execute(text(f"SHOW {name}"))).scalar_one()) for name in names]

    async def through_connection(connection: Connection) -> list[str]:
        return [str(await connection.fetchval(f"SHOW {name}")) for name in names]

    try:
        seen = {
            "read": await database.read(through_connection),
            "write": await database.write(through_connection),
            "transaction": await database.transaction(through_connection),
            "stream": await database.stream(through_connection),
            "session": await database.run(through_session),
        }
    finally:
        await database.dispose()
    expected = [
        f"{settings.statement_timeout_ms}ms",
        f"{settings.lock_timeout_ms}ms",
        f"{settings.idle_in_transaction_timeout_ms}ms",
    ]
    normalised = {shape: [_as_ms(value) for value in values] for shape, values in seen.items()}
    assert normalised == dict.fromkeys(seen, expected), seen


def _as_ms(value: str) -> str:
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit) and value[: -len(unit)].isdigit():
            return f"{int(value[: -len(unit)]) * units[unit]}ms"
    return value


async def test_http_limits_hold_with_default_settings(database: Database, seeded: str) -> None:
    app: FastAPI = create_app(defaults(), database)
    limit = defaults().max_body_bytes
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
        padding = limit - len(json.dumps({"name": "a", "description": ""}).encode())
        at_limit = json.dumps({"name": "a", "description": "d" * padding}).encode()
        assert len(at_limit) == limit
        over = json.dumps({"name": "a", "description": "d" * (padding + 1)}).encode()
        assert len(over) == limit + 1
        headers = {"Content-Type": "application/json"}
        accepted = await api.post("/tutorials", content=at_limit, headers=headers)
        refused = await api.post("/tutorials", content=over, headers=headers)
        for _ in range(30):
            await api.post("/tutorials", json={"name": "row"})
        default_page = (await api.get("/tutorials")).json()
        capped = await api.get("/tutorials", params={"limit": PAGE_MAX})
        too_big = await api.get("/tutorials", params={"limit": PAGE_MAX + 1})
    # The body limit: at the limit the body is read and judged on its content (a description of
    # a megabyte is too long: 422 naming it), past it 413 before it is read.
    assert accepted.status_code == 422
    assert [error["loc"] for error in accepted.json()["errors"]] == [["body", "description"]]
    assert refused.status_code == 413
    assert refused.headers["content-type"].startswith("application/problem+json")
    # Pages: 20 by default, at most PAGE_MAX on request (3 seeded rows + 30 posted here).
    assert len(default_page["items"]) == 20 and default_page["next_cursor"]
    assert capped.status_code == 200 and len(capped.json()["items"]) == 33 <= PAGE_MAX
    assert too_big.status_code == 422
