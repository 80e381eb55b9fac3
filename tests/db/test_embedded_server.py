"""`EmbeddedPostgres`, the facade: start, adopt, status, stop, the URLs, and `serve` on top.

Roots come from the `embedded_roots` fixture (tests/conftest.py): most are copies of one
initdb'd root made per session, which costs a few ms instead of initdb's second; every server
started in them is stopped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from tests.conftest import EmbeddedRoots, postmasters
from tests.support import free_port

from tutorials.db.embedded import (
    DATABASE_NAME,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    ServerStatus,
)


async def _probe(url: str) -> tuple[str, int, str, str, str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        db = await conn.fetchval("SELECT current_database()")
        # lc_ctype stopped being a SHOW-able setting in PostgreSQL 16: ask pg_database.
        lc_ctype = await conn.fetchval(
            "SELECT datctype FROM pg_database WHERE datname = current_database()"
        )
        listen = await conn.fetchval("SHOW listen_addresses")
        fsync = await conn.fetchval("SHOW fsync")
        return db, conn.get_server_version().major, lc_ctype, listen, fsync
    finally:
        await conn.close()


def _port_of(url: str) -> int:
    return int(url.split("@127.0.0.1:", 1)[1].split("/", 1)[0])


def test_fresh_start_returns_a_working_url_without_a_secret(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new()
    pg = EmbeddedPostgres(root)
    url = pg.start()

    port = _port_of(url)
    assert url == f"postgresql://postgres@127.0.0.1:{port}/tutorials?passfile={root}/pgpass"
    assert asyncio.run(_probe(url)) == (DATABASE_NAME, 18, "C.UTF-8", "127.0.0.1", "on")
    assert (root / "port").read_text() == f"{port}\n"
    assert (root / "log" / "postgresql.log").is_file()
    assert (root / "log" / "initdb.log").is_file()
    assert [p.name for p in root.glob(".pwfile-*")] == []  # initdb's pwfile is gone
    pgpass = (root / "pgpass").stat()
    assert (pgpass.st_uid, pgpass.st_mode & 0o777) == (os.geteuid(), 0o600)
    if os.geteuid() == 0:
        assert pg.data_dir.stat().st_uid == pwd.getpwnam("tutorials-pg").pw_uid
        assert root.stat().st_uid == 0  # root itself is not handed over


def test_url_forms_and_status(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    pg = EmbeddedPostgres(root)
    url = pg.start()
    status = pg.status()
    assert status == ServerStatus(True, status.pid, _port_of(url), root / "data", url)
    assert pg.url() == url
    assert pg.url(sqlalchemy=True) == url.replace("postgresql://", "postgresql+asyncpg://", 1)


def test_an_unusual_root_path_is_quoted_in_the_url(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True, name="with space&x")
    url = EmbeddedPostgres(root, durable=False).start()
    assert url.endswith(f"?passfile={root.parent}/with%20space%26x/pgpass")
    assert asyncio.run(_probe(url))[0] == DATABASE_NAME


def test_a_throwaway_server_runs_without_fsync(embedded_roots: EmbeddedRoots) -> None:
    url = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False).start()
    assert asyncio.run(_probe(url))[4] == "off"


def test_start_twice_is_idempotent_and_recreates_database(embedded_roots: EmbeddedRoots) -> None:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False)
    url = pg.start()
    first = pg.status()
    assert first.running

    async def drop() -> None:
        conn = await asyncpg.connect(url.replace("/tutorials?", "/postgres?"))
        try:
            await conn.execute(f'DROP DATABASE "{DATABASE_NAME}"')
        finally:
            await conn.close()

    asyncio.run(drop())
    assert pg.start() == url
    assert pg.status().pid == first.pid
    assert asyncio.run(_probe(url))[0] == DATABASE_NAME
    assert postmasters(pg.data_dir) == [first.pid]


def test_second_object_adopts_running_server(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    first = EmbeddedPostgres(root, durable=False)
    url = first.start()
    before = first.status()

    second = EmbeddedPostgres(root)
    assert second.status() == before
    assert second.start() == url
    assert second.attach() == url
    after = second.status()
    assert (after.pid, after.port) == (before.pid, before.port)
    assert second.stop() is True
    assert first.status().running is False


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user, attach is start")
def test_adopting_a_running_server_runs_no_process(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What every command does first (as root): no psql, no `postgres -V`, no runuser."""
    root = embedded_roots.new(initdb=True)
    url = EmbeddedPostgres(root, durable=False).start()

    def refused(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"attach ran a process: {args[0]!r}")

    monkeypatch.setattr(subprocess, "run", refused)
    monkeypatch.setattr(subprocess, "Popen", refused)
    assert EmbeddedPostgres(root).attach() == url
    monkeypatch.undo()
    assert asyncio.run(_probe(url))[0] == DATABASE_NAME


def test_stop_then_status_and_stop_again(embedded_roots: EmbeddedRoots) -> None:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False)
    pg.start()
    pid = pg.status().pid
    assert pid is not None

    assert pg.stop() is True
    assert pg.status() == ServerStatus(False, None, None, pg.data_dir, None)
    assert pg.url() is None
    assert pg.client_connections() == 0
    assert postmasters(pg.data_dir) == []
    assert pg.stop() is False


def test_status_and_stop_of_unknown_root_create_nothing(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(create=False)
    pg = EmbeddedPostgres(root)
    assert pg.status().running is False
    assert pg.stop() is False
    assert pg.url() is None
    assert not root.exists()


def test_client_connections_counts_other_sessions(embedded_roots: EmbeddedRoots) -> None:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False)
    url = pg.start()
    assert pg.client_connections() == 0

    async def with_two_open() -> int:
        first = await asyncpg.connect(url)
        second = await asyncpg.connect(url)
        try:
            return await asyncio.to_thread(pg.client_connections)
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(with_two_open()) == 2


def test_pg_version_mismatch_raises_and_keeps_data(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new()
    data = root / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("17\n")
    (data / "precious").write_text("keep me")

    with pytest.raises(EmbeddedPostgresError, match=r"PostgreSQL 17 .*PostgreSQL 18"):
        EmbeddedPostgres(root).start()
    assert (data / "precious").read_text() == "keep me"
    assert (data / "PG_VERSION").read_text() == "17\n"
    assert postmasters(data) == []


def test_non_data_dir_is_refused(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new()
    (root / "data").mkdir()
    (root / "data" / "notes.txt").write_text("not postgres")
    with pytest.raises(EmbeddedPostgresError, match="not a PostgreSQL data dir"):
        EmbeddedPostgres(root).start()
    assert (root / "data" / "notes.txt").exists()


# --------------------------------------------------------------------------- through `serve`
# With no DATABASE_URL, `tutorials serve` starts the embedded server early (provisioning), in a
# thread, while it imports the API; opening the database then adopts it.

SERVE = [sys.executable, "-c", "from tutorials.cli import main; main()", "serve"]


def _serve_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUTORIALS_", "PG"))}
    env.pop("DATABASE_URL", None)
    return {**env, "TUTORIALS_HOME": str(root)}


def _readyz(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(
                b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            return int(connection.recv(64).split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_serve_on_an_existing_data_dir_is_ready(
    embedded_roots: EmbeddedRoots, running: bool
) -> None:
    root = embedded_roots.new(initdb=True)  # the schema is migrated by serve
    pg = EmbeddedPostgres(root, durable=False)
    if running:
        pg.start()
    port = free_port()
    log = root.parent / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*SERVE, "--port", str(port)], env=_serve_env(root), stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + 60
        while _readyz(port) != 200:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve never became ready"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    status = pg.status()
    assert status.running  # the embedded server outlives serve, as documented
    assert postmasters(pg.data_dir) == [status.pid]


@pytest.mark.skipif(os.geteuid() != 0, reason="the service user exists only as root")
def test_serve_reports_an_embedded_server_that_cannot_start(
    embedded_roots: EmbeddedRoots,
) -> None:
    root = embedded_roots.new(create=False, mode=0o700)
    result = subprocess.run(
        [*SERVE, "--port", str(free_port())],
        env=_serve_env(root),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot open the database: user tutorials-pg cannot traverse")
    assert not (root / "data").exists()
