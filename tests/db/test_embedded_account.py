"""The service account: created only by the provisioning start, never by the library's entry;
and as a user other than root, no account at all."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
from tests.conftest import EmbeddedRoots, postmasters

from tutorials.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from tutorials.db.embedded import account as account_module
from tutorials.db.engine import aresolve_url, resolve_url
from tutorials.settings import Settings

as_root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="the service account exists only when running as root"
)

NOT_RUNNING = "the embedded PostgreSQL is not running: start it with `tutorials db start`"


@pytest.fixture
def absent_account(embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A service account name no one has: removed again if a test created it. (The session's
    template root is made first, by the real service account.)"""
    name = f"tutorials-t{uuid.uuid4().hex[:10]}"
    monkeypatch.setattr(account_module, "SERVICE_USER", name)
    yield name
    embedded_roots.close()  # a server a failing test started as `name` would keep it in use
    subprocess.run(["userdel", name], capture_output=True, check=False)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@as_root_only
def test_the_library_entry_as_root_provisions_nothing(
    embedded_roots: EmbeddedRoots, absent_account: str
) -> None:
    root = embedded_roots.new(create=False)
    settings = Settings(_env_file=None, home=root)  # type: ignore[call-arg]
    with pytest.raises(EmbeddedPostgresError) as caught:
        EmbeddedPostgres(root).attach()
    assert str(caught.value) == NOT_RUNNING
    with pytest.raises(EmbeddedPostgresError) as caught:
        resolve_url(settings)  # the library's way in: provision=False
    assert str(caught.value) == NOT_RUNNING
    assert not _exists(absent_account)
    assert not root.exists()


@as_root_only
async def test_the_async_library_entry_as_root_starts_nothing(
    embedded_roots: EmbeddedRoots,
) -> None:
    root = embedded_roots.new(initdb=True)  # a data dir that is there, but stopped
    settings = Settings(_env_file=None, home=root)  # type: ignore[call-arg]
    with pytest.raises(EmbeddedPostgresError) as caught:
        await aresolve_url(settings)
    assert str(caught.value) == NOT_RUNNING
    assert postmasters(root / "data") == []


@as_root_only
def test_resolve_url_with_provision_starts_the_server(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(initdb=True)
    settings = Settings(_env_file=None, home=root)  # type: ignore[call-arg]
    url = resolve_url(settings, provision=True).sqlalchemy_url()
    port = EmbeddedPostgres(root).status().port
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+asyncpg",
        "postgres",
        None,
        "127.0.0.1",
        port,
        "tutorials",
    )
    assert dict(url.query) == {"passfile": str(root / "pgpass")}
    assert resolve_url(settings).sqlalchemy_url() == url  # and the library then adopts it


@as_root_only
def test_service_owner_creates_the_account_only_when_asked(absent_account: str) -> None:
    with pytest.raises(EmbeddedPostgresError) as caught:
        account_module.service_owner(create=False)
    assert str(caught.value) == (
        f"system user {absent_account} does not exist: create it and the embedded PostgreSQL "
        "with `tutorials db start`"
    )
    assert not _exists(absent_account)

    uid, gid = account_module.service_owner(create=True) or (None, None)
    entry = pwd.getpwnam(absent_account)
    assert (uid, gid) == (entry.pw_uid, entry.pw_gid)
    assert entry.pw_shell in ("/usr/sbin/nologin", "/bin/false")


def _as_user(uid: int, gid: int, work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child that has become ``uid``: the interpreter is already
    loaded, so the other user need not reach it (the venv's python may live under /root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.chdir("/")
            out = work()
            code = 0
        except BaseException as exc:
            out = f"{type(exc).__name__}: {exc}"
        os.write(write_end, out.encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def test_a_user_other_than_root_starts_its_own_server_from_the_library(
    embedded_roots: EmbeddedRoots, other_user: str
) -> None:
    """Not root: nothing to provision, so the library's entry runs initdb and starts the server
    as that user, in that user's root, with no runuser and no copy."""
    root = embedded_roots.new(create=False)
    entry = pwd.getpwnam(other_user)
    root.mkdir(mode=0o755)
    os.chown(root, entry.pw_uid, entry.pw_gid)

    def attach() -> str:
        pg = EmbeddedPostgres(root, durable=False)
        return json.dumps([pg.attach(), pg.status().pid])

    url, pid = json.loads(_as_user(entry.pw_uid, entry.pw_gid, attach))
    assert url.endswith(f"/tutorials?passfile={root}/pgpass")
    assert postmasters(root / "data") == [pid]
    assert os.stat(f"/proc/{pid}").st_uid == entry.pw_uid
    data, pgpass = (root / "data").stat(), (root / "pgpass").stat()
    assert (data.st_uid, data.st_mode & 0o777) == (entry.pw_uid, 0o700)
    assert (pgpass.st_uid, pgpass.st_mode & 0o777) == (entry.pw_uid, 0o600)
    assert list(root.glob("bin-*")) == []
