"""The postmaster: stale pid files, ports, the socket directory, concurrent starters, failures."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import asyncpg
import pytest
from tests.conftest import EmbeddedRoots, postmasters

from tutorials.db.embedded import DATABASE_NAME, EmbeddedPostgres, EmbeddedPostgresError, listen
from tutorials.db.embedded import postmaster as postmaster_module
from tutorials.db.embedded.layout import Layout
from tutorials.db.embedded.postmaster import is_our_postmaster


async def _database_of(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return str(await conn.fetchval("SELECT current_database()"))
    finally:
        await conn.close()


def _port_of(url: str) -> int:
    return int(url.split("@127.0.0.1:", 1)[1].split("/", 1)[0])


def test_stale_pid_file_naming_live_unrelated_pid(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    pg = EmbeddedPostgres(root, durable=False)
    url = pg.start()
    old_port = _port_of(url)
    assert pg.stop() is True
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        stale = f"{sleeper.pid}\n{pg.data_dir}\n{int(time.time())}\n{old_port}\n\n127.0.0.1\n"
        (pg.data_dir / "postmaster.pid").write_text(stale + "       0         0\nready   \n")
        # PostgreSQL also trusts the pid in the socket lock file: make that one stale too.
        (root / "run" / f".s.PGSQL.{old_port}.lock").write_text(f"{os.getpid()}\n")

        assert pg.status().running is False
        assert pg.stop() is False  # the stale file names a live stranger: not signalled
        assert sleeper.poll() is None

        assert pg.start() == url
        new = pg.status()
        assert new.running
        assert new.pid not in (sleeper.pid, os.getpid())
        assert sleeper.poll() is None
        assert asyncio.run(_database_of(url)) == DATABASE_NAME
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pid_file_naming_own_pid_is_stale(embedded_roots: EmbeddedRoots) -> None:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False)
    (pg.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{pg.data_dir}\n")
    pg.start()
    assert pg.status().pid not in (None, os.getpid())


def test_start_after_postmaster_was_killed(embedded_roots: EmbeddedRoots) -> None:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False)
    url = pg.start()
    pid = pg.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # a server this test started
    deadline = time.monotonic() + 10
    while is_our_postmaster(pid, pg.data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pg.status().running is False

    assert pg.start() == url
    assert pg.status().pid != pid
    assert asyncio.run(_database_of(url)) == DATABASE_NAME


def test_concurrent_threads_end_with_one_server(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    barrier = threading.Barrier(4)
    urls: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            urls.append(EmbeddedPostgres(root, durable=False).start())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(urls) == 4
    assert len(set(urls)) == 1
    assert len(postmasters(root / "data")) == 1


def test_concurrent_processes_on_a_fresh_root_end_with_one_server(
    embedded_roots: EmbeddedRoots,
) -> None:
    root = embedded_roots.new()  # empty: the processes race for initdb too
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tutorials.db.embedded import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres(Path(sys.argv[1]), durable=False)\n"
        "url = pg.start()\n"
        "print(json.dumps([url, pg.status().pid]))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=90)  # returns: the postmaster never holds the pipe
        assert p.returncode == 0, err
        results.append(tuple(json.loads(out)))
    assert len(set(results)) == 1
    assert postmasters(root / "data") == [results[0][1]]


def test_busy_port_in_port_file_leads_to_another_port(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        (root / "port").write_text(f"{busy_port}\n")

        url = EmbeddedPostgres(root, durable=False).start()
        port = _port_of(url)
        assert port != busy_port
        assert (root / "port").read_text() == f"{port}\n"
        assert asyncio.run(_database_of(url)) == DATABASE_NAME


def test_port_taken_after_check_is_retried(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate losing the race between the free-port check and the postmaster's bind.
    monkeypatch.setattr(listen, "port_is_free", lambda port: True)
    root = embedded_roots.new(initdb=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        (root / "port").write_text(f"{busy_port}\n")

        url = EmbeddedPostgres(root, durable=False).start()
        assert _port_of(url) != busy_port
        assert "could not bind" in (root / "log" / "postgresql.log").read_text()
        assert asyncio.run(_database_of(url)) == DATABASE_NAME


def test_free_remembered_port_is_reused(embedded_roots: EmbeddedRoots) -> None:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False)
    url = pg.start()
    pg.stop()
    assert pg.start() == url


def test_the_socket_dir_is_private(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    EmbeddedPostgres(root, durable=False).start()
    st = (root / "run").stat()
    assert (st.st_uid, st.st_mode & 0o777) == ((root / "data").stat().st_uid, 0o700)


def test_deep_root_uses_short_socket_dir(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True, name="d" * 100)
    pg = EmbeddedPostgres(root, durable=False)
    url = pg.start()
    socket_dir = Layout(root).socket_dir()
    assert str(socket_dir).startswith("/tmp/tutorials-pg-")
    assert (socket_dir.stat().st_mode & 0o777) == 0o700
    pid_file = (pg.data_dir / "postmaster.pid").read_text().splitlines()
    assert pid_file[4] == str(socket_dir)
    assert asyncio.run(_database_of(url)) == DATABASE_NAME
    assert pg.stop() is True
    assert not socket_dir.exists()


def test_a_postmaster_that_cannot_start_is_reported_with_its_log(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True))
    settings = (*postmaster_module.SERVER_SETTINGS, "work_mem=-1")
    monkeypatch.setattr(postmaster_module, "SERVER_SETTINGS", settings)
    with pytest.raises(EmbeddedPostgresError, match=r"failed to start.*work_mem"):
        pg.start()
    assert postmasters(pg.data_dir) == []
    assert pg.status().running is False
