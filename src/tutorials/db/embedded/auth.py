"""Who may connect: the superuser's password, the file that keeps it, ``pg_hba.conf``, the URL.

Every connection authenticates with SCRAM-SHA-256, over TCP and over the unix socket alike:
``trust`` would let any local OS user connect as superuser and run ``COPY ... TO PROGRAM``.

* The password is generated (``secrets.token_urlsafe``) and given to ``initdb`` through a
  ``--pwfile`` made for it and removed right after. It is kept in ``root/pgpass`` (the libpq
  ``.pgpass`` format), 0600 and owned by whoever runs the commands (root, or the non-root user),
  in a directory the service account cannot write. The URL carries no secret, only
  ``passfile=<that file>``, which libpq (``psql``) and asyncpg both understand: it works for
  the file's owner and for nobody else.
* The unix socket's directory is 0700 and belongs to the server's user (see ``listen.py``):
  other users cannot even reach it.
* A data directory made before this (``trust`` in ``pg_hba.conf``), or whose password file was
  lost or made readable by others, is secured at the next ``start``, in this order, so that
  TCP connections are never let in without a password and we never lock ourselves out: (1)
  ``pg_hba.conf`` becomes "unix socket only, trust" (reachable by the server's user alone), and
  the running server reloads it; (2) a new password is written to ``pgpass`` and set with
  ``ALTER ROLE`` by the server's user over the unix socket; (3) ``pg_hba.conf`` becomes the
  final SCRAM-only file, the server reloads it, and we wait until a connection without a
  password is refused. ``ALTER ROLE`` receives a SCRAM verifier computed here, never the
  password itself, so not even a logged statement can reveal it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from tutorials.db.embedded import account, files, postmaster, psql
from tutorials.db.embedded.binaries import Binaries
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import DATABASE_NAME, HOST, SUPERUSER, Layout

__all__ = [
    "CLOSED_HBA",
    "close_for_securing",
    "hba_is_closed",
    "initdb_pwfile",
    "is_secured",
    "read_password",
    "scram_verifier",
    "secure",
    "url",
]

CLOSED_HBA = """\
# Written by tutorials: every connection authenticates with a password (scram-sha-256).
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
local   replication     all                                     scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
"""

_TRANSITIONAL_HBA = f"""\
# Written by tutorials while it sets the superuser's password: only the unix socket, whose
# directory only the server's user can enter. Replaced by the scram-sha-256 file right after.
local   all             {SUPERUSER}                                trust
"""

_SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
_WAIT_SECONDS = 15.0
_NO_PASSWORD = "no password supplied"  # libpq's words (LC_MESSAGES=C) when auth is required


def url(layout: Layout, port: int, *, scheme: str = "postgresql") -> str:
    """The server's URL: no secret in it, only the password file's path (``passfile``)."""
    passfile = quote(str(layout.pgpass), safe="/")
    return f"{scheme}://{SUPERUSER}@{HOST}:{port}/{DATABASE_NAME}?passfile={passfile}"


# --------------------------------------------------------------------------- the password


def read_password(layout: Layout) -> str | None:
    """The superuser's password from ``root/pgpass``; None if there is none (or it is unusable:
    a link, or readable by others, which libpq and asyncpg would ignore anyway)."""
    try:
        text = files.read_text(layout.pgpass)
    except EmbeddedPostgresError:
        return None
    if text is None or os.stat(layout.pgpass).st_mode & 0o077:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) == 5 and fields[3] == SUPERUSER and fields[4]:
            return fields[4]
    return None


def _write_pgpass(layout: Layout, password: str) -> None:
    """0600, owned by us (whoever runs this: root, or the non-root user). token_urlsafe has no
    ``:`` or ``\\``, so nothing needs escaping. One line per way in: TCP, and the unix socket
    (which libpq and asyncpg look up as ``localhost``)."""
    lines = [f"{host}:*:*:{SUPERUSER}:{password}" for host in (HOST, "localhost")]
    files.write_atomic(layout.pgpass, "\n".join(lines) + "\n", mode=0o600)


def _new_password() -> str:
    return secrets.token_urlsafe(32)


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802 / 7677), computed here so
    the password itself never reaches the server. ``password`` is ASCII (SASLprep is then the
    identity)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@contextlib.contextmanager
def initdb_pwfile(layout: Layout, owner: account.Owner | None) -> Iterator[Path]:
    """A new password: written to ``pgpass``, and to a pwfile for initdb (readable by the
    server's user only, in root), removed as soon as initdb is done with it."""
    for leftover in layout.root.glob(".pwfile-*"):
        leftover.unlink()  # left by a killed start (we hold the lock)
    password = _new_password()
    _write_pgpass(layout, password)
    fd, name = tempfile.mkstemp(prefix=".pwfile-", dir=layout.root)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(password + "\n")
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


# --------------------------------------------------------------------------- pg_hba.conf


def hba_is_closed(layout: Layout) -> bool:
    """True unless some rule of ``data/pg_hba.conf`` lets a connection in without a password
    (``trust``), or the file is missing or not a plain file."""
    try:
        text = files.read_text(layout.data / "pg_hba.conf")
    except EmbeddedPostgresError:
        return False
    if text is None:
        return False
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if "trust" in fields:
            return False
    return True


def is_secured(layout: Layout) -> bool:
    """Whether the data dir needs :func:`secure`: a password on file and no ``trust`` rule."""
    return read_password(layout) is not None and hba_is_closed(layout)


def _write_hba(layout: Layout, text: str, owner: account.Owner | None) -> None:
    files.write_atomic(layout.data / "pg_hba.conf", text, mode=0o600, owner=owner)


def close_for_securing(layout: Layout, owner: account.Owner | None) -> None:
    """Before starting a server that :func:`secure` will secure: no TCP connection at all
    until then (only the private unix socket), so it never listens with ``trust``."""
    _write_hba(layout, _TRANSITIONAL_HBA, owner)


def secure(
    layout: Layout,
    service: Binaries,
    client: Binaries,
    owner: account.Owner | None,
    info: postmaster.PidFile,
) -> None:
    """Give the running server a new password and a SCRAM-only ``pg_hba.conf`` (see the module
    docstring for the order, and why). The caller holds the lock."""
    port, socket_dir = info.port, info.socket_dir
    if port is None or socket_dir is None:
        raise EmbeddedPostgresError(
            f"postmaster {info.pid} reports no port or unix socket; stop it with "
            "`tutorials db stop --force`, then start it again"
        )
    _write_hba(layout, _TRANSITIONAL_HBA, owner)
    postmaster.reload(layout, info)
    password = _new_password()
    _write_pgpass(layout, password)
    alter = f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_verifier(password)}';\n"
    # Retried until the reload is in effect (a socket under scram would refuse us until then).
    _until(
        lambda: psql.run(
            service, layout, alter, host=socket_dir, port=port, passfile=None, as_service=True
        ),
        lambda proc: proc.returncode == 0,
        "cannot set the superuser's password over the unix socket",
    )
    _write_hba(layout, CLOSED_HBA, owner)
    postmaster.reload(layout, info)
    _until(
        lambda: psql.run(client, layout, "SELECT 1;", host=HOST, port=port, passfile=None),
        lambda proc: proc.returncode != 0 and _NO_PASSWORD in proc.stderr,
        "the server still lets connections in without a password after reloading pg_hba.conf",
    )


def _until(
    attempt: Callable[[], subprocess.CompletedProcess[str]],
    done: Callable[[subprocess.CompletedProcess[str]], bool],
    failure: str,
) -> None:
    """Run ``attempt`` until ``done`` says so (a reload takes effect asynchronously)."""
    deadline = time.monotonic() + _WAIT_SECONDS
    while True:
        proc = attempt()
        if done(proc):
            return
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(f"{failure}: {account.tail(proc.stderr, 2)}")
        time.sleep(postmaster.POLL_SECONDS)
