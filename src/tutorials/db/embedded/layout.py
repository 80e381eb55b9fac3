"""Where things live in a root directory, and whether root may work in it.

Layout of a root directory (see :func:`default_root`)::

    root/             the invoking user's (as root: root's, writable by no one else)
      lock            fcntl.flock'ed by every start and stop
      port            TCP port chosen at the first start, reused while it is free
      pgpass          the superuser's password (.pgpass format), 0600: its owner's only
      data/           the PostgreSQL data directory (PG_VERSION, postmaster.pid, pg_hba.conf)
      log/            postgresql.log (the server's stderr), initdb.log
      run/            the unix socket (-k); /tmp/tutorials-pg-<hash> if root is too deep
      bin-<version>/  only as root, when the service user cannot reach the venv

As root, ``data/``, ``log/`` and ``run/`` belong to the service account (it runs the server);
everything else belongs to root, in a directory the service account cannot write: the password
file above all, which is why it is not in ``data/``.

Why root refuses some roots (:func:`check_root_is_safe`): root creates files in the root
directory, chowns directories in it to the service account, and writes the password there. If
anyone else could rename or replace the root or a component above it (a symlink, a directory
owned or writable by another user), they could make root chown, overwrite or disclose a file of
their choosing, or read the password. So, before anything is created or written, every existing
component of the path (the root itself, each directory above it, and the entries root will
write in it) must be root's and writable by no one else: a directory writable by others is
accepted above the root only if it is sticky (``/tmp``), where others cannot rename our entries.
Inside, ``data/``, ``log/`` and ``run/`` may also belong to the service account. Nothing is ever
fixed silently: the message names the component and what is wrong with it.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from tutorials.db.embedded import account
from tutorials.db.embedded.errors import EmbeddedPostgresError

__all__ = [
    "DATABASE_NAME",
    "HOST",
    "SUPERUSER",
    "Layout",
    "check_root_is_safe",
    "default_root",
]

DATABASE_NAME = "tutorials"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_SOCKET_NAME_MAX = len("/.s.PGSQL.65535")
BIN_CACHE_PREFIX = "bin-"


def default_root() -> Path:
    """Where the private server lives unless told otherwise.

    ``$TUTORIALS_HOME`` if set; as root ``/var/lib/tutorials/postgres`` (a root whose parents are
    traversable by the service user, unlike anything under ``/root``); otherwise the user's data
    dir (e.g. ``~/.local/share/tutorials/postgres``).
    """
    home = os.environ.get("TUTORIALS_HOME")
    if home:
        return Path(home).expanduser().absolute()
    if account.is_root():
        return Path("/var/lib/tutorials/postgres")
    import platformdirs

    return Path(platformdirs.user_data_dir("tutorials", appauthor=False)) / "postgres"


@dataclass(frozen=True)
class Layout:
    """The paths of one root directory."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def port_file(self) -> Path:
        return self.root / "port"

    @property
    def pgpass(self) -> Path:
        return self.root / "pgpass"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def init_dir(self) -> Path:
        """initdb runs here; renamed to ``data/`` only once complete."""
        return self.root / "data.initdb"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "postgresql.log"

    @property
    def initdb_log(self) -> Path:
        return self.log_dir / "initdb.log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def socket_dir(self) -> Path:
        """``run/``, or a short directory under /tmp when a socket path there would be too long
        (unix socket paths are limited to 107 bytes)."""
        if len(os.fsencode(self.run_dir)) + _SOCKET_NAME_MAX <= _SOCKET_PATH_MAX:
            return self.run_dir
        import hashlib

        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        return Path("/tmp") / f"tutorials-pg-{digest}"

    def is_fallback_socket_dir(self, path: Path) -> bool:
        return path != self.run_dir

    def bin_cache(self, version: str) -> Path:
        return self.root / f"{BIN_CACHE_PREFIX}{version}"

    @property
    def root_files(self) -> tuple[Path, ...]:
        """Entries of root that root itself writes (they must be root's alone)."""
        return (self.lock, self.port_file, self.pgpass)

    @property
    def service_dirs(self) -> tuple[Path, ...]:
        """Entries of root the service account may own."""
        return (self.data, self.init_dir, self.log_dir, self.run_dir)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _refuse(path: Path, problem: str) -> EmbeddedPostgresError:
    return EmbeddedPostgresError(
        f"refusing to run the embedded PostgreSQL as root in {path}: {problem} "
        "(use a root-owned directory, e.g. TUTORIALS_HOME=/var/lib/tutorials/postgres)"
    )


def _check_component(
    root: Path, path: Path, st: os.stat_result, owners: set[int], *, sticky_ok: bool
) -> None:
    if st.st_uid not in owners:
        raise _refuse(root, f"{path} belongs to {_owner_name(st.st_uid)}")
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        raise _refuse(root, f"{path} is writable by its group or by everyone")


def check_root_is_safe(layout: Layout, service_uid: int | None) -> None:
    """As root: refuse a root that someone other than root (and the service account, inside)
    could tamper with. Reads only; see the module docstring for why."""
    root = layout.root
    try:
        st_root = os.lstat(root)
    except FileNotFoundError:
        st_root = None
    if st_root is not None and stat.S_ISLNK(st_root.st_mode):
        raise _refuse(root, f"{root} is a symbolic link")
    if st_root is not None and not stat.S_ISDIR(st_root.st_mode):
        raise _refuse(root, f"{root} is not a directory")

    # Every directory above root, as written (a symlink there must be root's, in a directory
    # only root can write) and as resolved (where the data really is).
    resolved = Path(os.path.realpath(root.parent))
    for chain in ([*reversed(root.parents)], [*reversed(resolved.parents), resolved]):
        for path in chain:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break  # this one and those below are created by us, 0755
            if stat.S_ISLNK(st.st_mode):  # a link's own mode means nothing; its owner does
                if st.st_uid != 0:
                    raise _refuse(root, f"{path} is a link owned by {_owner_name(st.st_uid)}")
                continue
            _check_component(root, path, st, {0}, sticky_ok=True)

    if st_root is None:
        return
    _check_component(root, root, st_root, {0}, sticky_ok=False)
    service_owners = {0} if service_uid is None else {0, service_uid}
    for path in layout.root_files:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise _refuse(root, f"{path} is not a plain file (a link?); remove it")
        _check_component(root, path, st, {0}, sticky_ok=False)
    for path in layout.service_dirs:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(root, f"{path} is not a directory (a link?); remove it")
        _check_component(root, path, st, service_owners, sticky_ok=False)
    for path in root.glob(f"{BIN_CACHE_PREFIX}*"):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(root, f"{path} is not a directory (a link?); remove it")
        _check_component(root, path, st, {0}, sticky_ok=False)
