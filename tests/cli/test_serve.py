"""`tutorials serve`: the real server in a subprocess on a real database, its refusals, and a
graceful stop that lets an in-flight request finish and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL
from tests.conftest import EmbeddedRoots
from tests.serving import ServiceProcess, service_env, start_service
from tests.support import free_port
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.cli._app import EXIT_INVALID, EXIT_UNAVAILABLE
from tutorials.cli.serve import is_loopback
from tutorials.db.embedded import EmbeddedPostgres
from tutorials.db.url import parse_database_url

pytestmark = pytest.mark.slow  # over 10 s: scheduled first (tests/conftest.py)

runner = CliRunner()


@pytest.fixture
def server(database_url: URL, tmp_path: Path) -> Iterator[ServiceProcess]:
    """`tutorials serve` on this test's database, from when /healthz answers; stopped after."""
    url = database_url.render_as_string(hide_password=False)
    service = start_service(service_env(url), tmp_path, "--graceful-timeout", "10")
    try:
        yield service
    finally:
        service.stop()


def test_serve_answers_on_loopback_and_stops_cleanly_on_sigterm(server: ServiceProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
        created = client.post("/tutorials", json={"name": "served"})
        assert created.status_code == 201
        fetched = client.get(created.headers["location"], headers={"X-Request-ID": "serve-get"})
        assert fetched.json()["name"] == "served"
        assert fetched.headers["x-request-id"] == "serve-get"
        assert client.get("/openapi.json").status_code == 200
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=20) == 0
    lines = server.json_lines()
    access = [line for line in lines if line.get("logger") == "tutorials.access"]
    assert any(
        line["request_id"] == "serve-get" and line["status"] == 200 and "duration_ms" in line
        for line in access
    )
    assert "server" not in {k.lower() for k in fetched.headers}  # no server banner


def test_an_in_flight_request_finishes_before_the_server_stops(
    server: ServiceProcess, dsn: str
) -> None:
    body = json.dumps({"name": "in flight"}).encode()
    head = (
        f"POST /tutorials HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(head + body[:5])
        time.sleep(0.3)  # the request is being read when the stop arrives
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        connection.sendall(body[5:])
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert server.wait(timeout=20) == 0

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

    # A password that gets past authentication (the embedded server's own, from its passfile;
    # a trust server ignores it), so the error is about the database, and must not show it.
    passfile = database_url.query.get("passfile")
    password = Path(str(passfile)).read_text().split(":")[4].split()[0] if passfile else None
    password = password or "pw-never-shown"
    missing = database_url.set(database="no_such_database_here", password=password)
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
    assert password not in result.output


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


# --- What serve says when it starts ----------------------------------------------------------


def _password_for(url: URL) -> str:
    """A password the test's server accepts: the embedded server's own (from its passfile), or
    any for a trust server; either way one the log must never show."""
    passfile = url.query.get("passfile")
    if passfile:
        return Path(str(passfile)).read_text().split(":")[4].split()[0]
    return "pw-never-shown"


def _serve(url: str, workdir: Path, *args: str, **settings: str) -> ServiceProcess:
    """`tutorials serve ARGS` with `settings` (TUTORIALS_*), from when /readyz answers."""
    return start_service(service_env(url, **settings), workdir, *args, ready_path="/readyz")


def _stop(service: ServiceProcess) -> None:
    assert service.stop(timeout=20) == 0


def test_serve_says_where_it_listens_in_one_json_line(database_url: URL, tmp_path: Path) -> None:
    password = _password_for(database_url)
    url = database_url.set(password=password).render_as_string(hide_password=False)
    service = _serve(url, tmp_path)
    _stop(service)
    port, text = service.port, service.output()
    assert password not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    (started,) = [line for line in lines if line["logger"] == "tutorials.serve"]
    shown = unquote(parse_database_url(url).rendered())
    assert ":***@" in shown and password not in shown
    assert started["message"] == (
        f"listening on http://127.0.0.1:{port}, on {shown} (DATABASE_URL); Ctrl-C stops it"
    )
    assert (started["level"], started["url"], started["database"]) == (
        "info",
        f"http://127.0.0.1:{port}",
        shown,
    )
    assert "data_dir" not in started  # no embedded server, no data directory of ours


def test_serve_in_text_says_it_in_one_line_even_while_migrating(
    empty_database_url: URL, tmp_path: Path
) -> None:
    """A database behind the migrations: Alembic runs at start-up, and says nothing of its
    plugins; uvicorn's start-up lines give way to serve's own line."""
    url = empty_database_url.render_as_string(hide_password=False)
    service = _serve(url, tmp_path, "--log-format", "text", TUTORIALS_AUTO_MIGRATE="true")
    _stop(service)
    port, lines = service.port, service.output().splitlines()
    shown = unquote(parse_database_url(url).rendered())
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d INFO    listening on http://127\.0\.0\.1:{port}, on "
        rf"{re.escape(shown)} \(DATABASE_URL\); Ctrl-C stops it",
        lines[0],
    ), lines
    assert [line for line in lines if "listening on" in line] == [lines[0]]
    assert not any(line.startswith("{") for line in lines)
    assert not any("setup plugin" in line or "Uvicorn running" in line for line in lines)


def test_serve_json_logs_carry_no_alembic_plugin_noise(
    empty_database_url: URL, tmp_path: Path
) -> None:
    url = empty_database_url.render_as_string(hide_password=False)
    service = _serve(url, tmp_path, TUTORIALS_AUTO_MIGRATE="true")
    _stop(service)
    text = service.output()
    assert "setup plugin" not in text
    assert '"logger": "tutorials.serve"' in text


def test_serve_refuses_an_unknown_log_format() -> None:
    result = runner.invoke(app, ["serve", "--log-format", "xml"])
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == "error: --log-format must be json or text, not 'xml'\n"


def test_serve_on_the_embedded_server_names_its_data_directory(
    embedded_roots: EmbeddedRoots, tmp_path: Path
) -> None:
    root = embedded_roots.new(initdb=True)
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["TUTORIALS_HOME"] = str(root)
    service = ServiceProcess(env=env, workdir=tmp_path, extra_args=("--log-format", "text"))
    port = service.port
    try:
        service.start()
        deadline = time.monotonic() + 60
        while "listening on" not in service.output():
            assert service.alive(), service.output()
            assert time.monotonic() < deadline, service.output()
            time.sleep(0.1)
        _stop(service)
    finally:
        service.stop()
        EmbeddedPostgres(root).stop()
    (line,) = [line for line in service.output().splitlines() if "listening on" in line]
    assert line.endswith(
        f"listening on http://127.0.0.1:{port}, on the embedded PostgreSQL "
        f"postgresql://postgres@127.0.0.1:{_port_of(line)}/tutorials?passfile={root}/pgpass, "
        f"data directory {root / 'data'}; Ctrl-C stops it"
    ), line


def _port_of(line: str) -> str:
    return line.split("postgresql://postgres@127.0.0.1:", 1)[1].split("/", 1)[0]
