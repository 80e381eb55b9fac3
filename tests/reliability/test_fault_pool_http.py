"""Pool exhaustion, client disconnects and statement timeouts through the real service.

One `tutorials serve` for the module, with a deliberately small pool (2 connections, a
0.2 s wait) and a 1 s statement timeout (no lock timeout). Requests are made slow
for real: the test takes an ACCESS EXCLUSIVE lock on the table from a connection of its own,
so every statement the service sends waits on the server, holding its pooled connection.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from tests.clusters import quiet_settings
from tests.reliability.harness import Figures, PrivateDb, ms, sessions_of
from tests.serving import ServiceProcess, service_env, start_service

from tutorials.api import create_app
from tutorials.db.session import Database

APP = "rel-http-pool"
POOL_SIZE = 2
POOL_TIMEOUT = 0.2
STATEMENT_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def service(
    module_db: PrivateDb, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    env = service_env(
        module_db.url_text,
        TUTORIALS_POOL_SIZE=str(POOL_SIZE),
        TUTORIALS_POOL_TIMEOUT=str(POOL_TIMEOUT),
        TUTORIALS_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS),
        TUTORIALS_LOCK_TIMEOUT_MS="0",
        TUTORIALS_APPLICATION_NAME=APP,
    )
    started = start_service(env, tmp_path_factory.mktemp("pool-service"))
    try:
        yield started
    finally:
        started.stop()


@asynccontextmanager
async def table_locked(dsn: str) -> AsyncIterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on `tutorials` until the block ends."""
    connection = await asyncpg.connect(dsn)
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("LOCK TABLE tutorials IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await connection.close()


def gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def pool_state(http: httpx.AsyncClient) -> tuple[float, float]:
    text = (await http.get("/metrics")).text
    return gauge(text, "tutorials_db_pool_in_use"), gauge(text, "tutorials_db_pool_idle")


async def settled_pool(http: httpx.AsyncClient, within: float = 5.0) -> tuple[float, float]:
    """The pool's (in use, idle) once nothing is in use, or as it is after `within` seconds."""
    deadline = time.monotonic() + within
    state = await pool_state(http)
    while state[0] != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        state = await pool_state(http)
    return state


async def test_exhausted_pool_answers_503_fast_and_recovers(
    service: ServiceProcess, module_db: PrivateDb, figures: Figures
) -> None:
    requests = 8
    held = 0.8
    answers: list[tuple[int, float, str | None]] = []
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:

        async def one() -> None:
            started = time.monotonic()
            response = await http.get("/tutorials")
            answers.append(
                (
                    response.status_code,
                    time.monotonic() - started,
                    response.headers.get("retry-after"),
                )
            )

        async with asyncio.timeout(15):  # nothing hangs
            async with table_locked(module_db.dsn):
                load = asyncio.gather(*(one() for _ in range(requests)))
                await asyncio.sleep(held)
            await load
        in_use, idle = await settled_pool(http)
        after = await http.get("/tutorials")
    statuses = sorted(status for status, _, _ in answers)
    refused = [seconds for status, seconds, _ in answers if status == 503]
    figures(
        face="http",
        fault="pool exhaustion (table lock held)",
        pool_size=POOL_SIZE,
        sent=requests,
        ok=statuses.count(200),
        unavailable_503=len(refused),
        max_refusal_ms=ms(max(refused, default=None)),
        pool_timeout_ms=ms(POOL_TIMEOUT),
        in_use_after=in_use,
        idle_after=idle,
    )
    assert statuses == [200] * POOL_SIZE + [503] * (requests - POOL_SIZE)
    assert all(retry for status, _, retry in answers if status == 503)
    assert max(refused) < held  # refused while the slow ones still waited
    assert in_use == 0
    assert idle == POOL_SIZE
    assert after.status_code == 200


@pytest.mark.slow
async def test_client_disconnects_leak_nothing(
    service: ServiceProcess, module_db: PrivateDb, figures: Figures
) -> None:
    """Clients give up (0.3 s) while their requests wait on the server: nothing leaks."""
    gave_up = 0
    other: list[str] = []
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
        in_use_before, idle_before = await settled_pool(http)

        async def impatient(index: int) -> None:
            nonlocal gave_up
            async with httpx.AsyncClient(base_url=service.base_url, timeout=0.3) as client:
                try:
                    if index % 2:
                        response = await client.post("/tutorials", json={"name": f"gone {index}"})
                    else:
                        response = await client.get("/tutorials")
                except httpx.TimeoutException:
                    gave_up += 1
                    return
                if response.status_code != 503:
                    other.append(f"{response.status_code}")

        async with asyncio.timeout(20):
            async with table_locked(module_db.dsn):
                await asyncio.gather(*(impatient(index) for index in range(12)))
                await asyncio.sleep(0.5)
            in_use, idle = await settled_pool(http)
            sessions = await sessions_of(module_db.dsn, APP)
            after = await http.get("/tutorials")
    open_transactions = [row for row in sessions if str(row["state"]).startswith("idle in")]
    busy = [row for row in sessions if row["state"] == "active"]
    figures(
        face="http",
        fault="client disconnects mid-request",
        sent=12,
        faults_injected=gave_up,
        in_use_after=in_use,
        idle_before=idle_before,
        idle_after=idle,
        server_sessions_after=len(sessions),
        open_transactions_after=len(open_transactions),
    )
    assert gave_up >= POOL_SIZE, "no client gave up while its request was in flight"
    assert other == []
    assert in_use == 0 and in_use_before == 0
    assert idle <= POOL_SIZE
    assert len(sessions) <= POOL_SIZE
    assert open_transactions == [] and busy == []
    assert service.alive() and after.status_code == 200


async def test_statement_timeout_is_cancelled_server_side_and_503(
    service: ServiceProcess, module_db: PrivateDb, figures: Figures
) -> None:
    answers: list[tuple[int, float, str | None]] = []
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
        async with asyncio.timeout(15), table_locked(module_db.dsn):
            for method in ("GET", "POST"):
                started = time.monotonic()
                if method == "GET":
                    response = await http.get("/tutorials")
                else:
                    response = await http.post("/tutorials", json={"name": "too slow"})
                answers.append(
                    (
                        response.status_code,
                        time.monotonic() - started,
                        response.headers.get("retry-after"),
                    )
                )
            # Still holding the lock: no statement of the service is waiting for it any more.
            waiting = [
                row for row in await sessions_of(module_db.dsn, APP) if row["state"] == "active"
            ]
        in_use, _ = await settled_pool(http)
        rows = (await http.get("/tutorials", params={"limit": 100})).json()["items"]
    figures(
        face="http",
        fault="statement_timeout (table lock held)",
        sent=len(answers),
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        statuses=[status for status, _, _ in answers],
        max_answer_ms=ms(max(seconds for _, seconds, _ in answers)),
        still_waiting_server_side=len(waiting),
    )
    assert [status for status, _, _ in answers] == [503, 503]
    assert all(retry for _, _, retry in answers)
    assert all(seconds < STATEMENT_TIMEOUT_MS / 1000 + 3 for _, seconds, _ in answers)
    assert waiting == []
    assert in_use == 0
    assert all(row["name"] != "too slow" for row in rows)


async def test_cancelled_requests_in_process_leak_nothing(
    module_db: PrivateDb, figures: Figures
) -> None:
    """Requests cancelled at random moments (the ASGI app runs in the test's own tasks)."""
    app_name = "rel-asgi-cancel"
    database = Database.from_url(
        module_db.url,
        quiet_settings(pool_size=4, pool_timeout=5, application_name=app_name),
    )
    rng = random.Random(61)
    try:
        app = create_app(quiet_settings(), database)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            created = await http.post("/tutorials", json={"name": "target"})
            path = f"/tutorials/{created.json()['tutorial_id']}"

            def request(index: int) -> Awaitable[httpx.Response]:
                if index % 3 == 0:
                    return http.post("/tutorials", json={"name": f"cancelled {index}"})
                if index % 3 == 1:
                    return http.patch(
                        path,
                        json={"description": str(index)},
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                return http.get("/tutorials", params={"q": "target"})

            tasks = [asyncio.ensure_future(request(index)) for index in range(48)]
            loop = asyncio.get_running_loop()
            for task in tasks:
                if rng.random() < 0.7:
                    loop.call_later(rng.uniform(0, 0.05), task.cancel)
            async with asyncio.timeout(20):
                results = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled = sum(isinstance(result, asyncio.CancelledError) for result in results)
            opened, idle, _ = database.pool_stats()
            in_use = opened - idle
            sessions = await sessions_of(module_db.dsn, app_name)
            after = await http.get(path)
    finally:
        await database.dispose()
    statuses = sorted(
        {result.status_code for result in results if isinstance(result, httpx.Response)}
    )
    unexpected = [
        repr(result)
        for result in results
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError)
    ]
    open_transactions = [row for row in sessions if str(row["state"]).startswith("idle in")]
    figures(
        face="http (in-process)",
        fault="request tasks cancelled mid-flight",
        sent=len(tasks),
        faults_injected=cancelled,
        statuses=statuses,
        in_use_after=in_use,
        open_transactions_after=len(open_transactions),
    )
    assert cancelled > 0
    assert unexpected == []
    assert set(statuses) <= {200, 201}
    assert in_use == 0
    assert open_transactions == []
    assert all(row["state"] == "idle" for row in sessions), sessions
    assert after.status_code == 200
