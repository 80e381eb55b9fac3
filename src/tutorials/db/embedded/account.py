"""The account the server runs as, and running programs as it.

PostgreSQL refuses to run as root, and development machines and CI often run as root. As root,
``initdb``, ``pg_ctl`` (hence the postmaster) and the ``psql`` that sets a password run through
``runuser -u tutorials-pg``, a system user created by :func:`service_owner` with
``create=True``, which only the provisioning entry point (``EmbeddedPostgres.start``, used by
``tutorials db start`` and ``tutorials serve``) asks for. Only ``data/``, ``log/`` and ``run/``
(directories made inside root) are chowned to that user; permissions of ancestor directories
are never changed.

As any other user, the server simply runs as that user: there is no account to create and
nothing runs through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from tutorials.db.embedded.errors import EmbeddedPostgresError

__all__ = [
    "SERVICE_USER",
    "as_service",
    "clean_env",
    "ensure_private_dir",
    "is_root",
    "run_as_service",
    "service_can",
    "service_owner",
    "tail",
]

SERVICE_USER = "tutorials-pg"
"""System user that runs PostgreSQL when this process is root (PostgreSQL refuses root)."""

Owner = tuple[int, int]


def is_root() -> bool:
    return os.geteuid() == 0


def clean_env() -> dict[str, str]:
    """The caller's environment without PG* variables (PGHOST, PGOPTIONS... would redirect us)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_MESSAGES", "C")
    return env


def tail(text: str, lines: int = 5) -> str:
    """The last non-blank lines of a program's output, on one line (for error messages)."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def service_owner(*, create: bool) -> Owner | None:
    """(uid, gid) of the service user when we are root, else None.

    With ``create`` a missing account is made (``useradd --system``); without it, a missing
    account is an error telling which command sets things up.
    """
    if not is_root():
        return None
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        if not create:
            raise EmbeddedPostgresError(
                f"system user {SERVICE_USER} does not exist: create it and the embedded "
                "PostgreSQL with `tutorials db start`"
            ) from None
        pw = _create_account()
    return pw.pw_uid, pw.pw_gid


def existing_service_uid() -> int | None:
    """The service user's uid if the account exists (never creates it)."""
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def _create_account() -> pwd.struct_passwd:
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
        return pwd.getpwnam(SERVICE_USER)  # a concurrent useradd may have won: fine
    except KeyError:
        raise EmbeddedPostgresError(
            f"running as root, PostgreSQL needs system user {SERVICE_USER} "
            f"but useradd failed: {tail(detail, 2)}"
        ) from None


def _runuser() -> str:
    path = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.access(path, os.X_OK):
        raise EmbeddedPostgresError(
            "running as root needs runuser (util-linux) to run PostgreSQL as " + SERVICE_USER
        )
    return path


def as_service(argv: Sequence[str]) -> list[str]:
    """``argv`` run as the server's user (through runuser when we are root)."""
    if is_root():
        return [_runuser(), "-u", SERVICE_USER, "--", *argv]
    return list(argv)


def run_as_service(
    argv: Sequence[str], out: IO[bytes] | int, *, cwd: Path, timeout: float, log_hint: Path
) -> int:
    """Run a PostgreSQL tool as the server's user, stdout/stderr to the file ``out``.

    Output goes to a file, never a pipe (a postmaster would inherit the pipe). ``cwd`` is root
    because the caller's cwd may be unreadable by the service user.
    """
    try:
        proc = subprocess.run(
            as_service(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=clean_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedPostgresError(
            f"{os.path.basename(argv[0])} timed out after {timeout:.0f}s; see {log_hint}"
        ) from exc
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot run {argv[0]}: {exc}") from exc
    return proc.returncode


def service_can(*test_args: str) -> bool:
    """Run ``test ARGS`` as the service user (path traversal is checked for real)."""
    proc = subprocess.run(
        as_service(["test", *test_args]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env=clean_env(),
        timeout=30,
    )
    return proc.returncode == 0


def ensure_private_dir(path: Path, owner: Owner | None) -> None:
    """A 0700 directory inside root owned by the server's user (a link there is refused)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedPostgresError(f"{path} exists and is not a directory")
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)  # a directory (lstat above) in a directory only we can write
