"""Streaming replicas of the embedded server, for trying read replicas on one machine.

``tutorials db start --replicas N`` makes (once) and starts N hot standbys of the embedded
server, each in ``root/replica-<i>/`` laid out like root itself (``data/``, ``log/``, ``run/``,
``port``), listening on 127.0.0.1 on a port of its own. Later starts start them again, and
``tutorials db stop`` stops them with the primary. The library, ``tutorials serve`` and every
other command route reads to the running ones (``resolve_replicas``) when no DATABASE_URL is
set.

How a replica is made, and why:

* ``pg_basebackup -R -X stream -C -S tutorials_replica_<i>``, as the server's user, from the
  running primary over TCP with the superuser's password (given in the environment, never on
  a command line): a copy of the data directory that streams the WAL it needs while copying,
  writes ``standby.signal`` and the ``primary_conninfo`` to follow (password included, in
  ``postgresql.auto.conf``, inside the 0700 data directory of the server's user), and a
  replication slot so the primary keeps the WAL a stopped replica still needs.
* A slot keeps WAL for as long as its replica is away: ``max_slot_wal_keep_size`` (1 GB) is set
  on the primary, so a replica gone for good cannot fill its disk.
* The copy runs into ``data.initdb/`` and is renamed to ``data/`` only when complete, like
  initdb's, so a killed copy is never mistaken for a replica.
* The replica's ``pg_hba.conf`` and password are the primary's (copied): the same ``pgpass``
  file serves both, and the URL names it as for the primary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from tutorials.db.embedded import account, auth, datadir, files, listen, postmaster, psql
from tutorials.db.embedded.binaries import Binaries
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import HOST, SUPERUSER, Layout, check_root_is_safe
from tutorials.limits import MAX_REPLICAS

__all__ = ["ReplicaInfo", "ensure", "layouts", "running", "stop_all", "urls"]

PREFIX = "replica-"
SLOT_PREFIX = "tutorials_replica_"
_COPY_TIMEOUT = 600.0


@dataclass(frozen=True)
class ReplicaInfo:
    index: int
    layout: Layout
    pid: int
    port: int
    #: Its URL: the primary's password file serves it too.
    url: str


def layout_of(primary: Layout, index: int) -> Layout:
    return Layout(primary.root / f"{PREFIX}{index}")


def layouts(primary: Layout) -> list[tuple[int, Layout]]:
    """The replicas made in this root (started or not), by index."""
    found = []
    for path in primary.root.glob(f"{PREFIX}*"):
        suffix = path.name.removeprefix(PREFIX)
        if suffix.isdigit() and path.is_dir() and not path.is_symlink():
            found.append((int(suffix), Layout(path)))
    return sorted(found, key=lambda pair: pair[0])


def running(primary: Layout) -> list[ReplicaInfo]:
    """The replicas whose postmaster runs and accepts connections. Reads only."""
    found = []
    for index, layout in layouts(primary):
        info = postmaster.running(layout)
        if info is not None and info.ready and info.port is not None:
            found.append(
                ReplicaInfo(index, layout, info.pid, info.port, auth.url(primary, info.port))
            )
    return found


def ensure(
    primary: Layout,
    count: int,
    primary_port: int,
    service: Binaries,
    client: Binaries,
    owner: account.Owner | None,
    *,
    extra_settings: tuple[str, ...] = (),
    durable: bool = True,
) -> list[ReplicaInfo]:
    """Make replicas 1..count that do not exist yet, and start every replica of this root.

    The caller holds the root's lock and has the primary running on `primary_port`.
    """
    if count > MAX_REPLICAS:
        raise EmbeddedPostgresError(f"at most {MAX_REPLICAS} replicas on one machine")
    existing = {index for index, _ in layouts(primary)}
    wanted = sorted(existing | set(range(1, count + 1)))
    if any(index not in existing for index in wanted):
        _bound_slot_wal(client, primary, primary_port)
    started = []
    for index in wanted:
        layout = layout_of(primary, index)
        if account.is_root():
            check_root_is_safe(layout, account.existing_service_uid())
        files.make_dirs_0755(layout.root)
        account.ensure_private_dir(layout.log_dir, owner)
        datadir.check_version(layout, client)
        if not datadir.is_initialized(layout):
            _copy(primary, layout, index, primary_port, service, client, owner, durable=durable)
        datadir.check_owner(layout, owner)
        info = postmaster.settled(layout, clean=True)
        if info is None:
            info = postmaster.start(layout, service, owner, extra_settings=extra_settings)
        assert info.port is not None
        listen.write_port(layout, info.port)
        url = auth.url(primary, info.port)
        started.append(ReplicaInfo(index, layout, info.pid, info.port, url))
    return started


def stop_all(primary: Layout) -> int:
    """Stop every running replica of this root (fast shutdown); how many were stopped."""
    return sum(postmaster.stop(layout) for _, layout in layouts(primary))


def _bound_slot_wal(client: Binaries, primary: Layout, port: int) -> None:
    sql = "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB';\nSELECT pg_reload_conf();\n"
    proc = psql.run(client, primary, sql, host=HOST, port=port, passfile=primary.pgpass)
    if proc.returncode != 0:
        raise EmbeddedPostgresError(
            f"cannot bound the WAL kept for replicas: {account.tail(proc.stderr, 3)}"
        )


def _copy(
    primary: Layout,
    layout: Layout,
    index: int,
    primary_port: int,
    service: Binaries,
    client: Binaries,
    owner: account.Owner | None,
    *,
    durable: bool,
) -> None:
    """pg_basebackup into data.initdb/, renamed to data/ when complete (see the module)."""
    password = auth.read_password(primary)
    if password is None:
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL's password file {primary.pgpass} is missing: run "
            "`tutorials db start` first"
        )
    slot = f"{SLOT_PREFIX}{index}"
    _drop_idle_slot(client, primary, primary_port, slot)  # left by a replica removed by hand
    init_dir = layout.init_dir
    if init_dir.exists():
        shutil.rmtree(init_dir)  # left by a killed copy; we hold the lock
    account.ensure_private_dir(init_dir, owner)
    if layout.data.exists():
        layout.data.rmdir()  # empty (checked by check_version)
    conninfo = (
        f"host={HOST} port={primary_port} user={SUPERUSER} application_name={slot} "
        "connect_timeout=10"
    )
    argv = [
        service["pg_basebackup"],
        "-d",
        conninfo,
        "-D",
        str(init_dir),
        "-R",
        "-X",
        "stream",
        "-c",
        "fast",
        "-C",
        "-S",
        slot,
        "-w",
    ]
    if not durable:
        argv.append("--no-sync")
    env = account.clean_env()
    env["PGPASSWORD"] = password  # environment, not argv: other users cannot read it
    log_path = layout.log_dir / "basebackup.log"
    fd = files.create_fresh(log_path)
    with os.fdopen(fd, "w+b") as log:
        try:
            proc = subprocess.run(
                account.as_service(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=layout.root,
                env=env,
                timeout=_COPY_TIMEOUT,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(init_dir, ignore_errors=True)
            raise EmbeddedPostgresError(f"cannot run pg_basebackup: {exc}") from exc
        if proc.returncode != 0:
            log.seek(0)
            output = log.read().decode("utf-8", "replace")
            shutil.rmtree(init_dir, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"pg_basebackup failed (exit {proc.returncode}): {account.tail(output)}; "
                f"see {log_path}"
            )
    os.rename(init_dir, layout.data)


def _drop_idle_slot(client: Binaries, primary: Layout, port: int, slot: str) -> None:
    sql = (
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        f"WHERE slot_name = '{slot}' AND NOT active;\n"
    )
    proc = psql.run(client, primary, sql, host=HOST, port=port, passfile=primary.pgpass)
    if proc.returncode != 0:
        raise EmbeddedPostgresError(
            f"cannot drop the old replication slot {slot}: {account.tail(proc.stderr, 3)}"
        )


def urls(primary: Layout) -> list[str]:
    """The URLs of the running replicas."""
    return [info.url for info in running(primary)]
