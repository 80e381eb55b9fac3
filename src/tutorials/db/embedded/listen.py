"""Where the server listens: 127.0.0.1 on a remembered free port, and a private unix socket.

* The server listens on 127.0.0.1 only, on a free port chosen at the first start and kept in
  ``root/port``; if that port is busy later, another free one is chosen (and if it is taken
  between our check and the postmaster's bind, ``postmaster.start`` tries another).
* The unix socket goes into a 0700 directory of the server's user: ``run/``, or a short one
  under /tmp when the root is too deep for the 107-byte limit of socket paths (created 0700,
  and refused if someone else owns it). No other user can even reach the socket.
* PostgreSQL trusts the pid in a socket's ``.s.PGSQL.PORT.lock`` like the one in
  postmaster.pid, so those left by a dead postmaster are removed before a start.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

from tutorials.db.embedded import account, files
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import HOST, Layout

__all__ = [
    "clear_stale_socket_files",
    "ensure_socket_dir",
    "pick_free_port",
    "port_is_free",
    "read_port",
    "remove_fallback_socket_dir",
    "write_port",
]


def ensure_socket_dir(layout: Layout, owner: account.Owner | None) -> Path:
    path = layout.socket_dir()
    if not layout.is_fallback_socket_dir(path):
        account.ensure_private_dir(path, owner)
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


def clear_stale_socket_files(layout: Layout) -> None:
    """Remove .s.PGSQL.* left by a dead postmaster.

    As the service user PostgreSQL sees a foreign live pid in the lock file as alive (EPERM),
    so it would refuse to start. Only called when no postmaster of ours runs, on our own dir.
    """
    path = layout.socket_dir()
    if not path.is_dir() or path.is_symlink():
        return
    with contextlib.suppress(OSError):
        for f in path.glob(".s.PGSQL.*"):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def remove_fallback_socket_dir(layout: Layout) -> None:
    path = layout.socket_dir()
    if layout.is_fallback_socket_dir(path):
        with contextlib.suppress(OSError):
            path.rmdir()


def read_port(layout: Layout) -> int | None:
    try:
        text = (files.read_text(layout.port_file) or "").strip()
    except EmbeddedPostgresError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def write_port(layout: Layout, port: int) -> None:
    if read_port(layout) != port:
        files.write_atomic(layout.port_file, f"{port}\n")


def port_is_free(port: int) -> bool:
    """Can a listener bind 127.0.0.1:port? SO_REUSEADDR like the postmaster (TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_free_port(avoid: Sequence[int] = ()) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if port not in avoid:
            return port
    raise EmbeddedPostgresError("could not find a free TCP port on 127.0.0.1")
