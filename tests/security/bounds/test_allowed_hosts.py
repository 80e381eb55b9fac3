"""Item 7 of issue 12: bound to loopback, the service answers to loopback names only.

A page on `rebind.evil.example` whose name an attacker re-points at 127.0.0.1 (DNS rebinding)
reaches the service from the browser, but its requests still say `Host: rebind.evil.example`:
they get 400 and write nothing. `localhost`, `127.0.0.1` and `[::1]`, with any port, are
served; `TUTORIALS_ALLOWED_HOSTS` replaces that list.
"""

from __future__ import annotations

import json

import asyncpg
from tests.security.bounds.conftest import Figures, Serve
from tests.security.bounds.wire import exchange, request

BODY = json.dumps({"name": "rebinding"}).encode()
JSON = {"Content-Type": "application/json"}


async def _count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM tutorials"))
    finally:
        await connection.close()


async def test_a_loopback_bind_answers_only_to_loopback_names(
    serve: Serve, dsn: str, figures: Figures
) -> None:
    async with serve() as service:
        port = service.port
        foreign = await exchange(
            port, request("POST", "/tutorials", "rebind.evil.example", JSON, BODY)
        )
        foreign_read = await exchange(port, request("GET", "/tutorials", f"evil.example:{port}"))
        statuses = {}
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            statuses[host] = (await exchange(port, request("GET", "/healthz", host))).status
        created = await exchange(
            port, request("POST", "/tutorials", f"127.0.0.1:{port}", JSON, BODY)
        )
    rows = await _count(dsn)
    figures(foreign_post=foreign.status, foreign_get=foreign_read.status, loopback=statuses)
    assert foreign.status == 400
    assert foreign.problem()["detail"] == (
        "this service does not answer to the host 'rebind.evil.example'"
    )
    assert foreign_read.status == 400
    assert set(statuses.values()) == {200}
    assert created.status == 201
    assert rows == 1  # the foreign POST wrote nothing


async def test_allowed_hosts_can_be_configured(serve: Serve, figures: Figures) -> None:
    # 127.0.0.1 too: the harness checks the service's health by it
    hosts = "api.example, *.internal.example, 127.0.0.1"
    async with serve(TUTORIALS_ALLOWED_HOSTS=hosts) as service:
        port = service.port
        answers = {
            host: (await exchange(port, request("GET", "/healthz", host))).status
            for host in ("api.example", "a.internal.example:8", "localhost", "evil.example")
        }
    figures(answers=answers)
    assert answers == {
        "api.example": 200,
        "a.internal.example:8": 200,
        "localhost": 400,
        "evil.example": 400,
    }
