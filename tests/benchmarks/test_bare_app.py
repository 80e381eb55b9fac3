"""The tuned bare app (`benchmarks/bare_app.py`) answers the benchmarked paths as the service does.

A baseline that answers differently (fewer headers, another body, a cheaper status) would make
the service's ratio against it mean nothing, so both apps get the same requests on the same
database and their answers are compared: status, content type, the headers a client relies on,
and the body's keys and value formats.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from benchmarks.bare_app import make_app, with_access_line
from starlette.types import ASGIApp

from tutorials.api import create_app
from tutorials.db.session import Database
from tutorials.settings import Settings

BODY = {"name": "bench post", "description": "posted by the benchmark", "tags": ["python"]}
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@asynccontextmanager
async def _client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as managed:
        transport = httpx.ASGITransport(app=managed.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


def _shape(response: httpx.Response) -> tuple[object, ...]:
    """What must agree between the two servers (ids and times differ by nature)."""
    body = response.json()
    assert UTC_TIME.fullmatch(body["created_at"]), body["created_at"]
    assert UTC_TIME.fullmatch(body["updated_at"]), body["updated_at"]
    assert response.headers["etag"] == f'"{body["version"]}"'
    kept = {k: v for k, v in body.items() if k not in ("tutorial_id", "created_at", "updated_at")}
    return response.status_code, response.headers["content-type"], list(body), kept


async def test_bare_app_answers_get_and_post_like_the_service(
    settings: Settings, database: Database, dsn: str
) -> None:
    async with (
        _client(create_app(settings, database)) as service,
        _client(make_app(dsn, 2)) as bare,
    ):
        answers = {}
        for name, client in (("service", service), ("bare", bare)):
            created = await client.post("/tutorials", json=BODY)
            location = created.headers["location"]
            assert location == f"/tutorials/{created.json()['tutorial_id']}"
            read = await client.get(location)
            assert read.json() == created.json()
            missing = await client.get("/tutorials/999999")
            answers[name] = (
                _shape(created),
                _shape(read),
                missing.status_code,
                missing.headers["content-type"],
            )
    assert answers["bare"] == answers["service"]
    assert answers["bare"][0][0] == 201
    assert answers["bare"][1][0] == 200
    assert answers["bare"][2] == 404


async def test_the_ceiling_variant_writes_the_service_access_line(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`--service-transport` adds the service's access line (its logger and fields), one per
    request, with the status the client got: the ceiling measures that work, not less."""
    with caplog.at_level(logging.INFO, logger="tutorials.access"):
        async with _client(with_access_line(make_app(dsn, 2))) as bare:
            created = await bare.post("/tutorials", json=BODY)
            missing = await bare.get("/tutorials/999999")
    lines = [r for r in caplog.records if r.name == "tutorials.access"]
    assert [(r.method, r.path, r.route, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("POST", "/tutorials", "/tutorials", created.status_code),
        ("GET", "/tutorials/999999", "/tutorials/{tutorial_id}", missing.status_code),
    ]
    assert (created.status_code, missing.status_code) == (201, 404)
    assert all(r.duration_ms >= 0 and r.client for r in lines)  # type: ignore[attr-defined]
