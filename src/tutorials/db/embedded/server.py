"""``EmbeddedPostgres``: the life cycle of the private server living in one root directory.

Two ways in, because only the command line provisions:

* :meth:`EmbeddedPostgres.start` (``tutorials db start``, ``tutorials serve``, hence ``./dev``)
  does everything: as root it creates the service account if missing, copies the binaries if
  that account cannot reach the venv, runs initdb and the postmaster as that account, and
  secures an old data directory (see ``auth.py``).
* :meth:`EmbeddedPostgres.attach` (the library's lazy first connection, through
  ``resolve_url``) never acts as another OS user. As root that means it only adopts a server
  that runs already, and otherwise raises :class:`EmbeddedPostgresError` naming the command to
  run. As any other user there is nothing to provision (no account, no copy: everything runs
  as that user, in that user's data dir), so it starts the server like ``start`` does.

Starters and stoppers are serialized with ``fcntl.flock`` on ``root/lock``, so two processes
starting together do not both run initdb or start two postmasters. The lock is released by the
kernel when its holder dies, unlike a pid file, and its descriptor is close-on-exec, so the
postmaster does not keep it.

Everything here is synchronous (subprocess, flock); async callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tutorials.db.embedded import (
    account,
    auth,
    binaries,
    datadir,
    files,
    listen,
    postmaster,
    psql,
)
from tutorials.db.embedded import replicas as replica_files
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import HOST, Layout, check_root_is_safe

__all__ = ["EmbeddedPostgres", "ServerStatus"]

_LOCK_TIMEOUT = 180.0
NOT_RUNNING = "the embedded PostgreSQL is not running: start it with `tutorials db start`"


@dataclass(frozen=True)
class ServerStatus:
    """What is known about the server of one root.

    ``running`` is True only when our postmaster is alive and reports ``ready``; ``pid`` and
    ``port`` are also filled while it is starting or stopping. ``url`` is the libpq form
    (``postgresql://``, with ``passfile``) while it runs.
    """

    running: bool
    pid: int | None
    port: int | None
    data_dir: Path
    url: str | None


class EmbeddedPostgres:
    """Life cycle of the private server living in one root directory (see the module docstring).

    ``durable=False`` runs a server started by this object without fsync: for throwaway
    servers (tests), never for data anyone wants to keep.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self._layout = Layout(Path(root).expanduser().absolute())
        self._extra_settings = () if durable else postmaster.NOT_DURABLE_SETTINGS

    @property
    def root(self) -> Path:
        return self._layout.root

    @property
    def data_dir(self) -> Path:
        return self._layout.data

    @property
    def log_file(self) -> Path:
        return self._layout.log_file

    @property
    def passfile(self) -> Path:
        """The password file the URL names (``passfile=``); readable by its owner only."""
        return self._layout.pgpass

    # ---------------------------------------------------------------- public API

    def start(self, *, replicas: int = 0) -> str:
        """Start the server, provisioning whatever it needs; return its libpq URL.

        Idempotent: runs initdb if needed, starts the server, or adopts one already running on
        this data dir (started by an earlier process that exited without stopping it). Its
        replicas (``replicas.py``) are started too, and made first up to ``replicas``.
        """
        layout = self._layout
        if account.is_root():
            check_root_is_safe(layout, account.existing_service_uid())
        try:
            files.make_dirs_0755(layout.root)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot create root {layout.root}: {exc}") from exc
        with self._locked(create=True):
            owner = account.service_owner(create=True)
            client = binaries.wheel()  # what we run ourselves (psql, as us)
            datadir.check_version(layout, client)
            # What the server's user runs (initdb, pg_ctl, psql to set a password): checked
            # only when needed, since adopting a running server runs nothing as that user.
            service: binaries.Binaries | None = None
            if not datadir.is_initialized(layout):
                service = self._service_binaries(owner)
            account.ensure_private_dir(layout.log_dir, owner)
            if service is not None:
                datadir.initdb(layout, service, owner)
            datadir.check_owner(layout, owner)

            secured = auth.is_secured(layout)
            info = postmaster.settled(layout, clean=True)
            if info is None:
                service = service or self._service_binaries(owner)
                if not secured:
                    auth.close_for_securing(layout, owner)  # never listen on TCP with trust
                info = postmaster.start(layout, service, owner, extra_settings=self._extra_settings)
            if not secured:
                service = service or self._service_binaries(owner)
                auth.secure(layout, service, client, owner, info)
            url = self._use(client, info)
            if replicas > 0 or replica_files.layouts(layout):
                assert info.port is not None
                replica_files.ensure(
                    layout,
                    replicas,
                    info.port,
                    service or self._service_binaries(owner),
                    client,
                    owner,
                    extra_settings=self._extra_settings,
                    durable=not self._extra_settings,
                )
            return url

    def attach(self) -> str:
        """The URL of the running server, for the library: provisions nothing.

        As root: adopts a running server, else raises :class:`EmbeddedPostgresError` saying
        to run ``tutorials db start``; nothing is created and nothing runs as another user.
        As another user: :meth:`start`, which then provisions nothing (see the module docstring).
        """
        if not account.is_root():
            return self.start()
        layout = self._layout
        check_root_is_safe(layout, account.existing_service_uid())
        with self._locked(create=False):
            info = postmaster.settled(layout, clean=False)
            if info is None:
                raise EmbeddedPostgresError(NOT_RUNNING)
            if not auth.hba_is_closed(layout):
                raise EmbeddedPostgresError(
                    "the embedded PostgreSQL still lets connections in without a password "
                    "(made by an older version): secure it with `tutorials db start`"
                )
            if auth.read_password(layout) is None:
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL's password file {layout.pgpass} is missing or "
                    "readable by others: make a new password with `tutorials db start`"
                )
            # Adopting runs no process: the `start` that started this server made its database
            # (psql) and checked its binaries (`postgres -V`), two processes that would cost
            # every command about 20 ms. A database dropped since is named by the connection's
            # error, and `tutorials db start` makes it again.
            assert info.port is not None
            listen.write_port(layout, info.port)
            return auth.url(layout, info.port)

    def stop(self) -> bool:
        """Stop our server (fast shutdown); True if one was stopped, False if none was running.

        Connected clients are disconnected and their transactions rolled back: ask
        :meth:`client_connections` first to avoid that.
        """
        if not self._layout.root.is_dir():
            return False
        with self._locked(create=True):
            replica_files.stop_all(self._layout)
            return postmaster.stop(self._layout)

    def replica_urls(self) -> list[str]:
        """The URLs of this server's running replicas (none made: an empty list). Reads only:
        like ``attach``, nothing is started or created."""
        if not self._layout.root.is_dir():
            return []
        return replica_files.urls(self._layout)

    def replicas(self) -> list[replica_files.ReplicaInfo]:
        """The running replicas (index, layout, pid, port)."""
        if not self._layout.root.is_dir():
            return []
        return replica_files.running(self._layout)

    def status(self) -> ServerStatus:
        """Report without locking (a status call must not wait for a slow start)."""
        layout = self._layout
        info = postmaster.running(layout) if layout.root.is_dir() else None
        if info is None:
            return ServerStatus(False, None, None, layout.data, None)
        running = info.state == "ready" and info.port is not None
        url = auth.url(layout, info.port) if running and info.port is not None else None
        return ServerStatus(running, info.pid, info.port, layout.data, url)

    def url(self, *, sqlalchemy: bool = False) -> str | None:
        """The URL if the server is running, else None: libpq's ``postgresql://`` form (psql),
        or with ``sqlalchemy`` the ``postgresql+asyncpg://`` one. Neither carries the password,
        only the path of the file that holds it."""
        state = self.status()
        if state.port is None or not state.running:
            return None
        scheme = "postgresql+asyncpg" if sqlalchemy else "postgresql"
        return auth.url(self._layout, state.port, scheme=scheme)

    def client_connections(self) -> int:
        """How many client sessions are connected (0 when the server is not running)."""
        state = self.status()
        if state.port is None or not state.running:
            return 0
        return psql.client_connections(binaries.wheel(), self._layout, HOST, state.port)

    # ---------------------------------------------------------------- internals

    def _service_binaries(self, owner: account.Owner | None) -> binaries.Binaries:
        return binaries.for_service(self._layout, check_root=owner is not None, provision=True)

    def _use(self, client: binaries.Binaries, info: postmaster.PidFile) -> str:
        assert info.port is not None
        listen.write_port(self._layout, info.port)
        psql.ensure_database(client, self._layout, HOST, info.port)
        return auth.url(self._layout, info.port)

    @contextlib.contextmanager
    def _locked(self, *, create: bool, timeout: float = _LOCK_TIMEOUT) -> Iterator[None]:
        """Exclusive flock on root/lock; a new open file per call so threads exclude too.

        Without ``create`` a missing lock file means no server was ever started here.
        """
        path = self._layout.lock
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            raise EmbeddedPostgresError(NOT_RUNNING) from None
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot open lock {path}: {exc.strerror}") from None
        try:
            deadline = time.monotonic() + timeout
            pause = postmaster.POLL_SECONDS / 2
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
