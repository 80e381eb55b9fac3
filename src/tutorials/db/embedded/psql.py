"""Running SQL on the server with its own ``psql``: as us, or as the server's user."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tutorials.db.embedded import account
from tutorials.db.embedded.binaries import Binaries
from tutorials.db.embedded.errors import EmbeddedPostgresError
from tutorials.db.embedded.layout import DATABASE_NAME, SUPERUSER, Layout

__all__ = ["client_connections", "ensure_database", "run"]


def run(
    binaries: Binaries,
    layout: Layout,
    sql: str,
    *,
    host: str,
    port: int,
    passfile: Path | None,
    as_service: bool = False,
    database: str = "postgres",
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``sql`` through psql (stdin), tuples only, stopping at the first error.

    ``passfile`` None means no password at all (``/dev/null``, ``-w``: never a prompt), which
    is how a password-less attempt is made on purpose. psql exits when done, so it may write
    to a pipe (unlike pg_ctl, it leaves no process behind holding it).
    """
    env = account.clean_env()
    env["PGCONNECT_TIMEOUT"] = "10"
    env["PGPASSFILE"] = str(passfile) if passfile is not None else "/dev/null"
    argv: Sequence[str] = [
        binaries["psql"],
        "-X",
        "-q",
        "-w",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        SUPERUSER,
        "-d",
        database,
        "-f",
        "-",
    ]
    if as_service:
        argv = account.as_service(argv)
    try:
        return subprocess.run(
            argv,
            input=sql,
            capture_output=True,
            text=True,
            cwd=layout.root,
            env=env,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedPostgresError(f"cannot run psql: {exc}") from exc


def ensure_database(binaries: Binaries, layout: Layout, host: str, port: int) -> None:
    """CREATE DATABASE tutorials unless it exists (under the flock, so no race with us)."""
    sql = (
        f"SELECT 'CREATE DATABASE \"{DATABASE_NAME}\"' WHERE NOT EXISTS "
        f"(SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
    )
    proc = run(binaries, layout, sql, host=host, port=port, passfile=layout.pgpass)
    if proc.returncode != 0:
        raise EmbeddedPostgresError(
            f"creating database {DATABASE_NAME} failed: {account.tail(proc.stderr, 3)}"
        )


def client_connections(binaries: Binaries, layout: Layout, host: str, port: int) -> int:
    """How many client sessions other than this question's own are connected."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();\n"
    )
    proc = run(binaries, layout, sql, host=host, port=port, passfile=layout.pgpass)
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise EmbeddedPostgresError(
            f"cannot count the server's connections: {account.tail(proc.stderr, 3)}"
        )
    return int(proc.stdout.strip())
