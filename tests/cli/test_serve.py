"""`tutorials serve`: the real server in a subprocess on a real database, its refusals, and a
graceful stop that lets an in-flight request finish and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.cli._app import EXIT_INVALID, EXIT_UNAVAILABLE
from tutorials.cli.serve import is_loopback

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.base_url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log = log

    def log_lines(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
def server(database_url: URL, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "TUTORIALS_AUTO_MIGRATE": "false",
    }
    env.pop("TUTORIALS_API_TOKENS", None)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from tutorials.cli import main; main()",
                "serve",
                "--port",
                str(port),
                "--graceful-timeout",
                "10",
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    running = Server(process, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{running.base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_answers_on_loopback_and_stops_cleanly_on_sigterm(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
        created = client.post("/tutorials", json={"name": "served"})
        assert created.status_code == 201
        fetched = client.get(created.headers["location"], headers={"X-Request-ID": "serve-get"})
        assert fetched.json()["name"] == "served"
        assert fetched.headers["x-request-id"] == "serve-get"
        assert client.get("/openapi.json").status_code == 200
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    lines = server.log_lines()
    access = [line for line in lines if line.get("logger") == "tutorials.access"]
    assert any(
        line["request_id"] == "serve-get" and line["status"] == 200 and "duration_ms" in line
        for line in access
    )
    assert "server" not in {k.lower() for k in fetched.headers}  # no server banner


def test_an_in_flight_request_finishes_before_the_server_stops(server: Server, dsn: str) -> None:
    body = json.dumps({"name": "in flight"}).encode()
    head = (
        f"POST /tutorials HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(head + body[:5])
        time.sleep(0.3)  # the request is being read when the stop arrives
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        connection.sendall(body[5:])
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert server.process.wait(timeout=20) == 0

    async def names() -> list[str]:
        connection = await asyncpg.connect(dsn)
        try:
            return [row["name"] for row in await connection.fetch("SELECT name FROM tutorials")]
        finally:
            await connection.close()

    assert asyncio.run(names()) == ["in flight"]


def test_serve_refuses_a_public_address_with_open_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    from tutorials.settings import get_settings

    monkeypatch.delenv("TUTORIALS_API_TOKENS", raising=False)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == EXIT_INVALID
    assert "TUTORIALS_API_TOKENS" in result.stderr
    assert "--allow-open-writes" in result.stderr


def test_serve_fails_in_one_line_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tutorials.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:s3cret@127.0.0.1:1/none")
    monkeypatch.setenv("TUTORIALS_CONNECT_TIMEOUT", "2")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["serve", "--port", str(free_port())])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == EXIT_UNAVAILABLE
    assert result.stderr.strip().splitlines() == ["error: cannot reach the database"]
    assert "s3cret" not in result.output


def test_serve_names_a_missing_database_in_one_line(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tutorials.settings import get_settings

    missing = database_url.set(database="no_such_database_here", password="pw-never-shown")
    monkeypatch.setenv("DATABASE_URL", missing.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["serve", "--port", str(free_port())])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        'error: cannot open the database: database "no_such_database_here" does not exist'
    ]
    assert "pw-never-shown" not in result.output


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.3.2.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
