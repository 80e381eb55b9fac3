"""What operators rely on: health and readiness, metrics, request ids and access logs, CORS,
503 + Retry-After whenever the database cannot serve, and the app's own lifespan."""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr
from sqlalchemy.engine import URL
from tests.api.conftest import ClientFactory
from tests.api.helpers import create, fetch_rows

from tutorials.api import create_app
from tutorials.api.logs import JsonFormatter, RequestIdFilter
from tutorials.db.session import Database
from tutorials.settings import Settings


async def test_healthz_answers_while_the_process_lives(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_when_the_database_answers_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_is_503_on_a_database_behind_the_migrations(
    settings: Settings, empty_database_url: URL, make_client: ClientFactory
) -> None:
    database = Database.from_url(empty_database_url, settings)
    try:
        async with make_client(create_app(settings, database)) as client:
            ready = await client.get("/readyz")
            healthy = await client.get("/healthz")
    finally:
        await database.dispose()
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.headers["retry-after"] == "1"
    assert "migrations" in ready.json()["detail"]
    assert healthy.status_code == 200  # alive, just not ready


@pytest.fixture
async def unreachable(settings: Settings, database_url: URL) -> Database:
    """A Database aimed at a closed port (nothing listens on 127.0.0.1:1)."""
    database = Database.from_url(
        database_url.set(host="127.0.0.1", port=1),
        settings.model_copy(update={"connect_timeout": 2.0, "retry_after_seconds": 7}),
    )
    yield database  # type: ignore[misc]
    await database.dispose()


async def test_every_database_route_is_503_with_retry_after_when_unreachable(
    settings: Settings, unreachable: Database, make_client: ClientFactory
) -> None:
    app = create_app(settings.model_copy(update={"retry_after_seconds": 7}), unreachable)
    async with make_client(app) as client:
        responses = {
            "get": await client.get("/tutorials/1"),
            "list": await client.get("/tutorials"),
            "search": await client.get("/tutorials", params={"q": "x"}),
            "post": await client.post("/tutorials", json={"name": "x"}),
            "patch": await client.patch("/tutorials/1", json={"name": "x"}),
            "delete": await client.delete("/tutorials/1"),
            "readyz": await client.get("/readyz"),
        }
        healthz = await client.get("/healthz")
    for name, response in responses.items():
        assert response.status_code == 503, name
        assert response.headers["retry-after"] == "7", name
        assert response.headers["content-type"] == "application/problem+json"
        assert "database" in response.json()["detail"], name
    assert healthz.status_code == 200


async def test_an_exhausted_pool_is_503_after_a_short_wait(
    settings: Settings, database_url: URL, make_client: ClientFactory
) -> None:
    tiny = settings.model_copy(update={"pool_size": 1, "pool_timeout": 0.2})
    database = Database.from_url(database_url, tiny)
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold(_connection: object) -> None:
        holding.set()
        await release.wait()

    try:
        async with make_client(create_app(tiny, database)) as client:
            holder = asyncio.create_task(database.read(hold))  # the pool's only connection
            await holding.wait()
            held = await client.get("/tutorials")
            release.set()
            await holder
            released = await client.get("/tutorials")
    finally:
        await database.dispose()
    assert held.status_code == 503
    assert held.headers["retry-after"] == "1"
    assert released.status_code == 200


async def test_a_write_stuck_behind_a_lock_is_503_and_changes_nothing(
    settings: Settings, database_url: URL, dsn: str, make_client: ClientFactory
) -> None:
    impatient = settings.model_copy(update={"lock_timeout_ms": 100})
    database = Database.from_url(database_url, impatient)
    try:
        async with make_client(create_app(impatient, database)) as client:
            location = (await create(client, name="locked")).headers["location"]
            blocker = await asyncpg.connect(dsn)
            try:
                transaction = blocker.transaction()
                await transaction.start()
                await blocker.execute("SELECT * FROM tutorials FOR UPDATE")
                response = await client.patch(location, json={"name": "changed"})
                await transaction.rollback()
            finally:
                await blocker.close()
    finally:
        await database.dispose()
    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert [row["name"] for row in await fetch_rows(dsn)] == ["locked"]


async def test_the_lifespan_opens_the_database_and_disposes_it(
    settings: Settings, database_url: URL
) -> None:
    configured = settings.model_copy(
        update={"database_url": SecretStr(database_url.render_as_string(hide_password=False))}
    )
    app = create_app(configured)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.post("/tutorials", json={"name": "x"})).status_code == 201
            assert (await client.get("/readyz")).status_code == 200
        database = app.state.database
        open_, idle, _size = database.pool_stats()
        assert open_ == idle >= 1
    assert database.pool_stats()[0] == 0  # closed: no connection left open


async def test_the_lifespan_fails_cleanly_when_the_database_is_unreachable(
    settings: Settings, database_url: URL
) -> None:
    from tutorials.errors import Unavailable

    url = database_url.set(host="127.0.0.1", port=1)
    configured = settings.model_copy(
        update={
            "database_url": SecretStr(url.render_as_string(hide_password=False)),
            "connect_timeout": 2,
        }
    )
    with pytest.raises(Unavailable):
        async with LifespanManager(create_app(configured)):
            pass


async def test_x_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    mine = await client.get("/healthz", headers={"X-Request-ID": "abc-123.trace"})
    assert mine.headers["x-request-id"] == "abc-123.trace"
    generated = await client.get("/healthz")
    other = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    assert generated.headers["x-request-id"] != other.headers["x-request-id"]
    hostile = await client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert hostile.headers["x-request-id"] not in ("a b\tc" + "x" * 200,)
    assert len(hostile.headers["x-request-id"]) == 32
    problem = await client.get("/nowhere", headers={"X-Request-ID": "find-me"})
    assert problem.json()["request_id"] == "find-me"


async def test_each_request_writes_one_structured_access_line_with_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tutorials.access")
    await client.get("/tutorials/77", headers={"X-Request-ID": "line-77"})
    records = [r for r in caplog.records if r.name == "tutorials.access"]
    assert len(records) == 1
    record = records[0]
    line = json.loads(JsonFormatter().format(record))
    assert line["method"] == "GET"
    assert line["path"] == "/tutorials/77"
    assert line["route"] == "/tutorials/{tutorial_id}"
    assert line["status"] == 404
    assert line["request_id"] == "line-77"
    assert isinstance(line["duration_ms"], float)


async def test_log_lines_written_during_a_request_carry_its_id(
    settings: Settings,
    unreachable: Database,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tutorials.api")
    caplog.handler.addFilter(RequestIdFilter())
    async with make_client(create_app(settings, unreachable)) as client:
        await client.get("/tutorials/1", headers={"X-Request-ID": "during"})
    warnings = [r for r in caplog.records if r.name == "tutorials.api"]
    assert warnings
    assert all(getattr(r, "request_id", None) == "during" for r in warnings)


async def test_metrics_count_requests_by_route_template_and_status(
    client: httpx.AsyncClient,
) -> None:
    await create(client)
    await client.get("/tutorials/1")
    await client.get("/tutorials/2")
    await client.get("/tutorials/999")
    await client.get("/no/such/path")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'tutorials_http_requests_total{method="GET",route="/tutorials/{tutorial_id}",'
        'status="200"} 1.0' in text
    )
    assert (
        'tutorials_http_requests_total{method="GET",route="/tutorials/{tutorial_id}",'
        'status="404"} 2.0' in text
    )
    assert 'route="unmatched",status="404"' in text
    assert "/no/such/path" not in text  # raw paths never become labels
    assert "tutorials_http_request_duration_seconds_bucket{" in text
    for gauge in ("in_use", "idle", "size"):
        assert f"tutorials_db_pool_{gauge} " in text


async def test_pool_gauges_follow_the_pool(client: httpx.AsyncClient, database: Database) -> None:
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold(_connection: object) -> None:
        holding.set()
        await release.wait()

    holder = asyncio.create_task(database.read(hold))
    await holding.wait()
    during = (await client.get("/metrics")).text
    release.set()
    await holder
    after = (await client.get("/metrics")).text
    assert "tutorials_db_pool_in_use 1.0" in during
    assert "tutorials_db_pool_in_use 0.0" in after
    assert f"tutorials_db_pool_size {database.settings.pool_size}.0" in after


async def test_apps_keep_separate_metrics(
    settings: Settings, database: Database, make_client: ClientFactory
) -> None:
    first, second = create_app(settings, database), create_app(settings, database)
    async with make_client(first) as one, make_client(second) as two:
        await one.get("/healthz")
        text = (await two.get("/metrics")).text
    assert 'route="/healthz"' not in text


async def test_cors_is_off_by_default_and_configurable(
    settings: Settings, database: Database, make_client: ClientFactory
) -> None:
    origin = "https://ui.example.org"
    async with make_client(create_app(settings, database)) as plain:
        closed = await plain.get("/healthz", headers={"Origin": origin})
    assert "access-control-allow-origin" not in closed.headers
    cors = create_app(settings.model_copy(update={"cors_origins": [origin]}), database)
    async with make_client(cors) as client:
        simple = await client.get("/tutorials", headers={"Origin": origin})
        preflight = await client.options(
            "/tutorials",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization",
            },
        )
        stranger = await client.get("/tutorials", headers={"Origin": "https://evil.example"})
    assert simple.headers["access-control-allow-origin"] == origin
    assert "ETag" in simple.headers["access-control-expose-headers"]
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in stranger.headers


async def test_concurrent_requests_each_hold_a_connection_only_briefly(
    settings: Settings, database_url: URL, make_client: ClientFactory
) -> None:
    small = settings.model_copy(update={"pool_size": 2, "pool_timeout": 5})
    database = Database.from_url(database_url, small)
    try:
        async with make_client(create_app(small, database)) as client:
            created = [(await create(client, name=f"t{i}")).json() for i in range(3)]
            responses = await asyncio.gather(
                *(client.get(f"/tutorials/{created[i % 3]['tutorial_id']}") for i in range(40))
            )
    finally:
        await database.dispose()
    assert {response.status_code for response in responses} == {200}


async def test_search_ranks_at_most_the_configured_candidates(
    settings: Settings, database_url: URL, make_client: ClientFactory
) -> None:
    bounded = settings.model_copy(update={"search_candidates": 3})
    database = Database.from_url(database_url, bounded)
    try:
        async with make_client(create_app(bounded, database)) as client:
            for index in range(6):
                await create(client, name=f"bounded search {index}")
            found: list[int] = []
            cursor = ""
            while True:
                page = (
                    await client.get(
                        "/tutorials", params={"q": "bounded", "limit": 2, "cursor": cursor}
                    )
                ).json()
                found += [item["tutorial_id"] for item in page["items"]]
                if page["next_cursor"] is None:
                    break
                cursor = page["next_cursor"]
            everything = (await client.get("/tutorials", params={"limit": 100})).json()
    finally:
        await database.dispose()
    assert len(found) == len(set(found)) == 3
    assert len(everything["items"]) == 6
