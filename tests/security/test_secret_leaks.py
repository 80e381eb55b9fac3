"""Secrets never leak: the DATABASE_URL password and the API tokens appear in no log line, no
error body, no --help, no repr and not in /metrics.

Canary secrets are planted (a password PostgreSQL's trust authentication ignores, and tokens),
every face is driven through its normal and failing paths — including the database going away
under a running service — and everything captured is grepped for the canaries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from tests.clusters import PrivateCluster, private_clusters_available
from tests.serving import running_service, service_env
from typer.testing import CliRunner

from tutorials.cli import app as cli_app
from tutorials.db.session import Database
from tutorials.errors import classify
from tutorials.settings import Settings, get_settings, normalize_database_url

PASSWORD = "pw-Zq8x-CANARY-secret"
TOKEN = "tok-Zq8x-CANARY-secret"
OTHER_TOKEN = "tok2-Zq8x-CANARY-other"
CANARIES = (PASSWORD, TOKEN, OTHER_TOKEN, "Zq8x-CANARY")


def leaks(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


@pytest.fixture(scope="module")
def secret_cluster() -> Iterator[PrivateCluster]:
    reason = private_clusters_available()
    if reason is not None:
        pytest.skip(reason)
    cluster = PrivateCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


def secret_url(cluster: PrivateCluster, database: str, port: int | None = None) -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port or cluster.port}/{database}"


@pytest.mark.slow
async def test_service_logs_bodies_and_metrics_hold_no_secret(
    secret_cluster: PrivateCluster, tmp_path: Path
) -> None:
    database = secret_cluster.create_database()
    env = service_env(
        secret_url(secret_cluster, database),
        TUTORIALS_API_TOKENS=f"{TOKEN},{OTHER_TOKEN}",
        TUTORIALS_CONNECT_TIMEOUT="1",
    )
    seen: list[str] = []

    def keep(answer: httpx.Response) -> None:
        seen.append(f"{answer.status_code} {dict(answer.headers)} {answer.text}")

    good = {"Authorization": f"Bearer {TOKEN}"}
    # Bound to every interface, which the service allows because tokens are set.
    async with running_service(
        env, tmp_path, "--log-level", "debug", "--host", "0.0.0.0"
    ) as service:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
            for method, path, kwargs in [
                ("GET", "/healthz", {}),
                ("GET", "/readyz", {}),
                ("GET", "/tutorials", {}),
                ("POST", "/tutorials", {"json": {"name": "no token"}}),
                (
                    "POST",
                    "/tutorials",
                    {"json": {"name": "bad"}, "headers": {"Authorization": f"Bearer {TOKEN}x"}},
                ),
                ("POST", "/tutorials", {"json": {"name": "ok"}, "headers": good}),
                ("POST", "/tutorials", {"json": {"name": "\x00"}, "headers": good}),
                (
                    "POST",
                    "/tutorials",
                    {"content": b"{", "headers": {**good, "Content-Type": "application/json"}},
                ),
                ("GET", "/nowhere", {}),
                ("PUT", "/tutorials", {}),
                ("GET", "/openapi.json", {}),
                ("GET", "/docs", {}),
                ("GET", "/metrics", {}),
            ]:
                keep(await http.request(method, path, **kwargs))  # type: ignore[arg-type]
            # The database goes away under the running service: errors are logged and answered.
            await asyncio.to_thread(secret_cluster.stop, "fast")
            try:
                for method, path, kwargs in [
                    ("GET", "/tutorials", {}),
                    ("GET", "/tutorials/1", {}),
                    ("POST", "/tutorials", {"json": {"name": "down"}, "headers": good}),
                    ("GET", "/readyz", {}),
                    ("GET", "/metrics", {}),
                ]:
                    keep(await http.request(method, path, **kwargs))  # type: ignore[arg-type]
            finally:
                await asyncio.to_thread(secret_cluster.start)
        log = service.output()
    statuses = [int(entry.split(" ", 1)[0]) for entry in seen]
    assert 503 in statuses and 401 in statuses and 201 in statuses, statuses
    assert log.strip(), "the service logged nothing: nothing was checked"
    assert leaks(log) == [], [line for line in log.splitlines() if leaks(line)][:3]
    assert leaks("\n".join(seen)) == []


def test_command_line_help_errors_and_logs_hold_no_secret(
    secret_cluster: PrivateCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    captured: list[str] = []
    unreachable = secret_url(secret_cluster, "postgres", port=1)
    monkeypatch.setenv("TUTORIALS_API_TOKENS", f"{TOKEN},{OTHER_TOKEN}")
    monkeypatch.setenv("TUTORIALS_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("TUTORIALS_AUTO_MIGRATE", "false")
    for url, commands in [
        (
            unreachable,
            [["--help"], ["serve", "--help"], ["db", "--help"], ["add", "--help"], ["list"],
             ["get", "1"], ["add", "x"], ["db", "upgrade"], ["db", "current"], ["db", "status"],
             ["db", "start"]],
        ),
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/x", [["list"], ["db", "current"]]),
        (f"mysql://postgres:{PASSWORD}@127.0.0.1/x", [["list"]]),
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1/x?sslmode=bogus", [["list"]]),
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1/x?password_file=/etc/passwd", [["list"]]),
    ]:  # fmt: skip
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        for args in commands:
            result = runner.invoke(cli_app, args)
            captured.append(f"{args}: {result.exit_code} {result.stdout} {result.stderr}")
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                captured.append(repr(result.exception) + str(result.exception.__cause__))
    get_settings.cache_clear()
    text = "\n".join(captured)
    print("\n" + "\n".join(entry[:160].replace("\n", " ") for entry in captured))
    codes = [int(entry.split("]: ", 1)[1].split(" ", 1)[0]) for entry in captured if "]: " in entry]
    assert 0 in codes and 5 in codes and codes.count(0) < len(codes), codes  # errors were hit
    assert leaks(text) == [], [entry for entry in captured if leaks(entry)][:3]
    assert leaks(caplog.text) == []


def test_serve_refusing_to_start_holds_no_secret(
    secret_cluster: PrivateCluster, tmp_path: Path
) -> None:
    env = service_env(
        secret_url(secret_cluster, "postgres", port=1),
        TUTORIALS_API_TOKENS=TOKEN,
        TUTORIALS_CONNECT_TIMEOUT="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", "from tutorials.cli import main; main()", "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 5, result.stderr[-1000:]
    assert leaks(result.stdout + result.stderr) == []


def _error_texts(error: BaseException) -> list[str]:
    """What an error could show: its repr and text, and those of every error it wraps."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [repr(current), str(current)]
        current = current.__cause__ or current.__context__
    return texts


async def test_reprs_and_errors_hold_no_secret(
    secret_cluster: PrivateCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = secret_url(secret_cluster, "postgres", port=1)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("TUTORIALS_API_TOKENS", f"{TOKEN},{OTHER_TOKEN}")
    settings = Settings(_env_file=None, connect_timeout=1)  # type: ignore[call-arg]
    texts = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        repr(settings.sqlalchemy_url()),
        str(settings.sqlalchemy_url()),
    ]
    database = Database.from_url(normalize_database_url(url), settings)
    failures = 0
    try:
        texts += [repr(database), repr(database.url), database.url.rendered()]
        texts += [repr(database.engine), str(database.engine.url)]
        texts += [repr(database.engine.pool), database.engine.pool.status()]
        # Both paths fail to connect (nothing listens on port 1): the service's units of work
        # on asyncpg's pool, and an ORM session on SQLAlchemy's engine.
        try:
            await database.read(lambda connection: connection.fetchval("SELECT 1"))
        except Exception as exc:
            failures += 1
            texts += _error_texts(exc)
        try:
            async with database.session() as session:
                await session.connection()
        except Exception as exc:
            failures += 1
            texts += _error_texts(exc)
            domain = classify(exc)
            texts.append(repr(domain))
    finally:
        await database.dispose()
    assert failures == 2
    # Settings that fail to validate do not echo the URL or the tokens either.
    monkeypatch.setenv("TUTORIALS_POOL_SIZE", f"many-{PASSWORD}")
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    texts.append(str(raised.value))
    for bad in (
        f"postgresql://postgres:{PASSWORD}@host:port/db",
        f"ftp://postgres:{PASSWORD}@host/db",
        f"postgresql://postgres:{PASSWORD}@host/db?evil={PASSWORD}",
    ):
        with pytest.raises(ValueError) as refused:
            normalize_database_url(bad)
        texts.append(str(refused.value))
    text = "\n".join(texts)
    assert leaks(text) == [], [entry for entry in texts if leaks(entry)][:3]
    assert os.environ["DATABASE_URL"] == url  # the environment itself is not rewritten
