"""`tutorials serve --workers 2`: uvicorn's worker processes on one port, each with its own pools,
the connection budget counted for both, `/metrics` adding up both, and a clean stop."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL
from tests.serving import ServiceProcess, service_env, start_service
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.db.budget import LIMITS, ServerLimits
from tutorials.settings import Settings

#: Answered 404 by whichever worker gets it, after a database read: a route of its own, so
#: nothing else (the fixture's polling, the scrapes) adds to its count.
MISSING = "/tutorials/987654321"
COUNTED = re.compile(
    r'^tutorials_http_requests_total\{method="GET",route="/tutorials/\{tutorial_id\}",'
    r'status="404"\} ([0-9.]+)$',
    re.MULTILINE,
)
SESSION_POOL = 2


async def _room(dsn: str) -> int:
    """Connections the server has for us, as `tutorials.db.budget` counts them."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(LIMITS)
    finally:
        await connection.close()
    assert row is not None
    reserve = Settings.model_fields["connection_reserve"].default
    return ServerLimits(*(int(value) for value in row)).room(reserve)


@pytest.fixture
def pool_size(dsn: str) -> int:
    """A pool one process's budget fits and two processes' do not (pools open on demand, so
    the server never sees that many)."""
    room = asyncio.run(_room(dsn))
    return room // 2 + 1 - SESSION_POOL


@pytest.fixture
def workers(database_url: URL, tmp_path: Path, pool_size: int) -> Iterator[ServiceProcess]:
    env = service_env(
        database_url.render_as_string(hide_password=False),
        TUTORIALS_POOL_SIZE=str(pool_size),
        TUTORIALS_SESSION_POOL_SIZE=str(SESSION_POOL),
        TUTORIALS_WORKERS="1",
    )
    temp = tmp_path / "tmp"  # where serve makes its metrics directory (TMPDIR)
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    service = start_service(env, tmp_path, "--workers", "2", "--log-format", "json")
    try:
        yield service
    finally:
        service.stop()


def _access(server: ServiceProcess, path: str) -> list[dict[str, object]]:
    return [
        line
        for line in server.json_lines()
        if line.get("logger") == "tutorials.access" and line.get("path") == path
    ]


def _pids(server: ServiceProcess, path: str, count: int) -> set[object]:
    """The processes that answered `path`, once its `count` access lines are written."""
    deadline = time.monotonic() + 10
    while len(lines := _access(server, path)) < count:
        assert time.monotonic() < deadline, f"{len(lines)} of {count} access lines"
        time.sleep(0.05)
    return {line["pid"] for line in lines}


def _get(server: ServiceProcess, path: str) -> httpx.Response:
    """One request on a new connection, so the kernel may hand it to either worker."""
    return httpx.get(server.base_url + path, timeout=10, headers={"Connection": "close"})


def test_workers_count_every_request_in_metrics_whichever_answers(
    workers: ServiceProcess, pool_size: int
) -> None:
    sent = 0
    # Until both workers have answered some (they take turns on new connections; bounded).
    while sent < 40 or (len(_pids(workers, MISSING, sent)) < 2 and sent < 2000):
        assert _get(workers, MISSING).status_code == 404
        sent += 1
    assert len(_pids(workers, MISSING, sent)) == 2
    scrapes = 0
    # Every scrape says the total, and both workers answer scrapes (bounded).
    while scrapes < 6 or (len(_pids(workers, "/metrics", scrapes)) < 2 and scrapes < 500):
        text = _get(workers, "/metrics").text
        scrapes += 1
        assert [float(n) for n in COUNTED.findall(text)] == [float(sent)]
        assert f"tutorials_db_pool_size {2.0 * pool_size}" in text  # both workers' pools
    assert len(_pids(workers, "/metrics", scrapes)) == 2

    workers.send_signal(signal.SIGTERM)
    assert workers.wait(timeout=30) == 0
    lines = workers.json_lines()
    listening = next(line for line in lines if line.get("logger") == "tutorials.serve")
    per_worker = pool_size + SESSION_POOL
    assert f"2 x {per_worker} = {2 * per_worker} connections" in str(listening["message"])
    budget = [line for line in lines if "connection budget exceeded" in str(line["message"])]
    assert budget
    assert "2 worker(s)" in str(budget[0]["message"])
    temp = workers.workdir / "tmp"
    assert [p.name for p in temp.iterdir() if p.name.startswith("tutorials-metrics-")] == []


def test_serve_refuses_fewer_than_one_worker() -> None:
    result = CliRunner().invoke(app, ["serve", "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output
