"""The postmaster: its pid file, starting it, waiting until it is ready, signalling it.

Pitfalls handled here, and why:

* ``postmaster.pid`` is trusted only if its pid is alive AND ``/proc/PID/cmdline`` is a
  ``postgres`` naming our data directory: pids get reused. Otherwise the file (and stale socket
  lock files, which PostgreSQL also trusts by pid) are removed before starting. No process is
  ever signalled unless it passed that check.
* Nothing stops the server when the process that started it dies: ``tutorials db stop`` does,
  and a later start ADOPTS a server already running on the same data directory (port read from
  ``postmaster.pid`` line 4).
* ``pg_ctl start`` logs to a FILE and its own output goes to a temporary file, never to a pipe:
  the postmaster would inherit the pipe and a caller reading it would hang.
* ``pg_ctl start -w`` looks for readiness only every 100 ms, several times longer than a restart
  of an existing data dir takes: :func:`start` reads ``postmaster.pid`` itself every 10 ms
  while pg_ctl runs and goes on as soon as our postmaster is ready; pg_ctl still decides
  failures.
* Where it listens (127.0.0.1, a remembered port, a private socket directory): ``listen.py``.
* As root, the log directory belongs to the service account, which could replace
  ``postgresql.log`` by a link: root only ever reads it without following links, and removes
  such a link before a start so pg_ctl makes a real file (see ``files.py``).
* Stopping is ``SIGINT`` (PostgreSQL's "fast" shutdown, what ``pg_ctl stop -m fast`` sends) to
  the checked pid, then waiting until that process is gone (it removes ``postmaster.pid`` and
  its sockets on the way out): no ``runuser`` and no service binaries are needed to stop.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tutorials.db.embedded import account, files, listen
from tutorials.db.embedded.binaries import Binaries
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import HOST, Layout

__all__ = [
    "NOT_DURABLE_SETTINGS",
    "POLL_SECONDS",
    "SERVER_SETTINGS",
    "PidFile",
    "is_our_postmaster",
    "read_pid_file",
    "reload",
    "running",
    "settled",
    "start",
    "stop",
]

START_TIMEOUT = 60
POLL_SECONDS = 0.01  # how often a wait looks again (postmaster.pid, the lock)
_START_ATTEMPTS = 5
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
SERVER_SETTINGS: tuple[str, ...] = (
    f"listen_addresses={HOST}",
    "max_connections=200",  # tests use pools of 20+ from several processes
    "shared_buffers=128MB",
)
#: For throwaway servers (tests): no fsync, which PostgreSQL documents as safe unless the
#: machine crashes. Never for data anyone wants to keep.
NOT_DURABLE_SETTINGS: tuple[str, ...] = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
)


@dataclass(frozen=True)
class PidFile:
    """The parts of ``postmaster.pid`` we use (lines: pid, datadir, start, port, sockdir, ...)."""

    pid: int
    port: int | None
    socket_dir: str | None
    state: str

    @property
    def ready(self) -> bool:
        return self.state in ("ready", "standby") and self.port is not None


def read_pid_file(layout: Layout) -> PidFile | None:
    """Parse postmaster.pid; None if absent.

    Never follows a link (the service account owns ``data/``); a link, like any garbage, gives
    pid 0, which is never ours. A permission error means the data dir is another user's.
    """
    path = layout.data / "postmaster.pid"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as exc:
        raise EmbeddedPostgresError(
            f"cannot read {path} as uid {os.geteuid()}: the data dir belongs to another user"
        ) from exc
    except OSError:  # ELOOP: a link
        return PidFile(pid=0, port=None, socket_dir=None, state="")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        plain = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        text = f.read(4096).decode("utf-8", "replace") if plain else ""
    lines = text.splitlines()

    def line(i: int) -> str:
        return lines[i].strip() if len(lines) > i else ""

    pid = int(line(0)) if line(0).isdigit() else 0
    port = int(line(3)) if line(3).isdigit() else None
    return PidFile(pid=pid, port=port, socket_dir=line(4) or None, state=line(7))


def is_our_postmaster(pid: int, data_dir: Path) -> bool:
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


def running(layout: Layout) -> PidFile | None:
    """Our postmaster's pid file if it is alive (in whatever state), else None. Reads only."""
    info = read_pid_file(layout)
    if info is None or not is_our_postmaster(info.pid, layout.data):
        return None
    return info


def settled(layout: Layout, *, clean: bool) -> PidFile | None:
    """Our running postmaster once ``ready`` (adoption), or None.

    A postmaster of ours that is starting (e.g. crash recovery) is waited for; one that is
    stopping is waited out. With ``clean``, a stale pid file and socket lock files are removed
    (the caller holds the lock and is about to start a postmaster).
    """
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        info = read_pid_file(layout)
        if info is None or not is_our_postmaster(info.pid, layout.data):
            # Stale: the pid is dead or belongs to someone else. Never signal it.
            if clean:
                with contextlib.suppress(FileNotFoundError):
                    (layout.data / "postmaster.pid").unlink()
                listen.clear_stale_socket_files(layout)
            return None
        if info.ready:
            return info
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"postmaster {info.pid} on {layout.data} stuck in state "
                f"{info.state or 'unknown'!r}; see {layout.log_file}"
            )
        time.sleep(POLL_SECONDS)


# --------------------------------------------------------------------------- the log


def _prepare_log(layout: Layout) -> int:
    """Rotate a large log, remove anything but a plain file at its name; its size (offset)."""
    try:
        st = os.lstat(layout.log_file)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.unlink(layout.log_file)  # a link planted in the service's dir: never followed
        return 0
    if st.st_size > _LOG_ROTATE_BYTES:
        os.replace(layout.log_file, layout.log_file.with_suffix(".log.1"))  # renames, no follow
        return 0
    return st.st_size


# --------------------------------------------------------------------------- start and stop


def start(
    layout: Layout,
    binaries: Binaries,
    owner: account.Owner | None,
    *,
    extra_settings: Sequence[str] = (),
) -> PidFile:
    """pg_ctl start, retrying on another free port if ours was taken meanwhile."""
    socket_dir = listen.ensure_socket_dir(layout, owner)
    tried: list[int] = []
    port = listen.read_port(layout)
    for _ in range(_START_ATTEMPTS):
        if port is None or port in tried or not listen.port_is_free(port):
            port = listen.pick_free_port(avoid=tried)
        tried.append(port)
        listen.write_port(layout, port)
        offset = _prepare_log(layout)
        opts = ["-p", str(port), "-k", str(socket_dir)]
        for setting in (*SERVER_SETTINGS, *extra_settings):
            opts += ["-c", setting]
        argv = [
            binaries["pg_ctl"],
            "start",
            "-D",
            str(layout.data),
            "-w",
            "-t",
            str(START_TIMEOUT),
            "-l",
            str(layout.log_file),
            "-o",
            shlex.join(opts),  # pg_ctl pastes it into a /bin/sh command line
        ]
        # pg_ctl's own output goes to a file, never a pipe (see the module docstring).
        with tempfile.TemporaryFile() as out:
            rc, ready = _pg_ctl_start(layout, argv, out)
            if ready is not None and rc in (None, 0):
                return ready
            out.seek(0)
            ctl_out = out.read().decode("utf-8", "replace")
        info = running(layout)
        if rc == 0 and info is not None and info.port is not None:
            return info
        log_text = files.read_text_from(layout.log_file, offset)
        if "could not bind" in log_text or "already in use" in log_text:
            port = None  # taken between our check and the postmaster's bind: try another
            continue
        raise EmbeddedPostgresError(
            f"PostgreSQL failed to start (pg_ctl exit {rc}): {account.tail(log_text)} "
            f"[pg_ctl: {account.tail(ctl_out, 2)}]; see {layout.log_file}"
        )
    raise EmbeddedPostgresError(
        f"PostgreSQL could not bind a port after trying {tried}; see {layout.log_file}"
    )


def _pg_ctl_start(
    layout: Layout, argv: Sequence[str], out: IO[bytes]
) -> tuple[int | None, PidFile | None]:
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
            account.as_service(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=layout.root,
            env=account.clean_env(),
        )
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot run {argv[0]}: {exc}") from exc
    deadline = time.monotonic() + START_TIMEOUT + 30
    while True:
        rc = proc.poll()
        info = running(layout)
        if info is not None and info.ready:
            if rc is None:
                threading.Thread(target=proc.wait, name="pg_ctl-reaper", daemon=True).start()
            return rc, info
        if rc is not None:
            return rc, None
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise EmbeddedPostgresError(
                f"pg_ctl timed out after {START_TIMEOUT + 30}s; see {layout.log_file}"
            )
        time.sleep(POLL_SECONDS)


def reload(layout: Layout, info: PidFile) -> None:
    """Make our postmaster re-read its configuration (pg_hba.conf): SIGHUP, as pg_ctl reload."""
    if not is_our_postmaster(info.pid, layout.data):
        raise EmbeddedPostgresError(f"postmaster {info.pid} on {layout.data} went away")
    os.kill(info.pid, signal.SIGHUP)


def stop(layout: Layout) -> bool:
    """Fast shutdown of our postmaster; True if one was stopped, False if none was running.

    The caller holds the lock. The pid in postmaster.pid is checked against /proc before it is
    signalled, so a stale file naming a reused pid never kills a stranger.
    """
    info = running(layout)
    if info is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGINT)  # what `pg_ctl stop -m fast` sends
    deadline = time.monotonic() + START_TIMEOUT
    while is_our_postmaster(info.pid, layout.data):
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"postmaster {info.pid} did not stop within {START_TIMEOUT}s; see {layout.log_file}"
            )
        time.sleep(POLL_SECONDS)
    listen.remove_fallback_socket_dir(layout)
    return True
