"""A real PgBouncer (Debian's package), in transaction mode, in front of the tests' server.

`PgBouncer.start(server_url)` writes a configuration into a temporary directory and runs
`pgbouncer` in the foreground as an unprivileged user (`postgres` when we are root: PgBouncer
refuses to run as root), listening on a free loopback port. Every database of the server is
reachable through it (`* = host=... port=...`), so each test's fresh database is too.

Authentication follows the server: a server that trusts loopback (the system PostgreSQL) gets
`auth_type = trust`; one with a password (the embedded server, whose URL names its password
file) gets `scram-sha-256`, with the password in PgBouncer's `auth_file`, which it also uses to
log in to the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL
from tests.clusters import missing_postgres_user
from tests.support import free_port

LOOPBACK = "127.0.0.1"


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def unavailable() -> str | None:
    """None when a PgBouncer can be run here; otherwise why not (a skip reason)."""
    if pgbouncer_binary() is None:
        return "pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does)"
    return missing_postgres_user("PgBouncer")


def _password(url: URL) -> str | None:
    """The URL's password, or the one its `passfile` holds for its user."""
    if url.password:
        return str(url.password)
    passfile = url.query.get("passfile")
    if not isinstance(passfile, str):
        return None
    for line in Path(passfile).read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 5 and fields[3] in ("*", url.username):
            return fields[4]
    return None


@dataclass
class PgBouncer:
    """One PgBouncer process; `url(database)` reaches a database of the server through it."""

    server: URL
    pool_size: int = 20
    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgbouncer-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.directory / "pgbouncer.log"

    def _configure(self) -> None:
        password = _password(self.server)
        user = self.server.username or "postgres"
        auth = "scram-sha-256" if password else "trust"
        self.directory.chmod(0o755)
        (self.directory / "userlist.txt").write_text(f'"{user}" "{password or ""}"\n')
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.server.host or LOOPBACK} port={self.server.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            f"auth_type = {auth}\n"
            f"auth_file = {self.directory / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 2000\n"
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.log_file}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        if os.geteuid() == 0:
            for path in (self.directory, *self.directory.iterdir()):
                shutil.chown(path, "postgres", "postgres")
            (self.directory / "userlist.txt").chmod(0o600)

    def start(self, within: float = 15) -> None:
        self._configure()
        binary = pgbouncer_binary()
        assert binary is not None
        # As `postgres` by setuid in the child, not under runuser: our process is PgBouncer
        # itself, so stopping it (or killing it) reaches it, and nothing outlives the tests.
        as_postgres: dict[str, object] = {}
        if os.geteuid() == 0:
            as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.process = subprocess.Popen(
            [binary, str(self.directory / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            **as_postgres,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex((LOOPBACK, self.port)) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen within {within} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGTERM: immediate shutdown (SIGINT would wait for its clients: a "safe" one).
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def url(self, database: str) -> URL:
        """`database` through PgBouncer, with the server URL's user and password options."""
        return self.server.set(host=LOOPBACK, port=self.port, database=database)
