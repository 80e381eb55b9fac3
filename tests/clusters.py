"""Private PostgreSQL clusters: servers of a test's own that it may stop, crash or restart.

Used by the fault suite (`tests/reliability`), the secret-leak tests and the consistency tests,
which must break or stop a server without touching the one every other test uses. A cluster is
initdb'd (trust authentication, `--no-sync`, `fsync=off`) in a new directory under /tmp, on a
free loopback port; as root, PostgreSQL's tools run as the `postgres` user, because the server
refuses to run as root. The binaries are found with `pg_config --bindir` (`tests.support`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL
from tests.serving import LOOPBACK, known_settings
from tests.support import free_port, pg_bindir, run_async

from tutorials.db.migrate import upgrade
from tutorials.db.session import Database
from tutorials.settings import Settings

PG_BIN = pg_bindir()


def private_clusters_available() -> str | None:
    """None when we can run a cluster of our own; otherwise why not (a skip reason)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as postgres"
    return missing_postgres_user("PostgreSQL")


def missing_postgres_user(program: str) -> str | None:
    """As root, servers run as the `postgres` user: why `program` cannot, if it is missing."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return f"running as root and there is no postgres user to run {program} as"
    return None


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class ClusterError(RuntimeError):
    """A private cluster could not be created, started or stopped (with its log's tail)."""


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of our own, on a free loopback port, that we may break at will."""

    root: Path
    port: int = field(default_factory=free_port)
    #: Extra `-c name=value` server settings, e.g. {"log_statement": "ddl"}.
    conf: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @classmethod
    def create(cls, conf: Mapping[str, str] | None = None) -> PrivateCluster:
        if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
            # PostgreSQL's tools (and its postgres user) cannot work without it.
            raise ClusterError(
                "/dev/null is not a character device any more: something replaced it with a "
                "file (e.g. a rename onto it); restore it with: rm /dev/null && "
                "mknod -m 666 /dev/null c 1 3"
            )
        root = Path(tempfile.mkdtemp(prefix="tutorials-rel-", dir="/tmp"))
        root.chmod(0o755)
        _chown_postgres(root)
        cluster = cls(root, conf=dict(conf or {}))
        try:
            cluster.socket_dir.mkdir()
            _chown_postgres(cluster.socket_dir)
            cluster._run(
                str(PG_BIN / "initdb"), "-D", str(cluster.data_dir), "-U", "postgres",
                "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            _as_postgres(list(command)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"{' '.join(command[:2])} failed ({result.returncode}): "
                f"{result.stderr.strip()[-800:]}\n{self.log_tail()}"
            )
        return result

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _options(self) -> str:
        settings = {
            "listen_addresses": LOOPBACK,
            # Throwaway clusters: the faults here are process faults (kill -9, restarts, a
            # dead network), which lose nothing fsync would have kept; only an operating
            # system crash would. A test about that durability would set it on in `conf`.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            # Deadlock tests should not wait the default second for the detector.
            "deadlock_timeout": "100ms",
            **self.conf,
        }
        flags = " ".join(f"-c {name}={value}" for name, value in settings.items())
        return f"-p {self.port} -k {self.socket_dir} {flags}"

    def start(self) -> None:
        for attempt in range(3):
            try:
                self._pg_ctl("start", "-o", self._options())
                return
            except ClusterError:
                if attempt == 2:
                    raise
                self.port = free_port()  # somebody took the port meanwhile

    def _pg_ctl(self, action: str, *args: str, timeout: float = 60) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), action, "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", "30", *args, timeout=timeout,
        )  # fmt: skip

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m MODE -w`: returns once the server accepts connections again."""
        self._pg_ctl("restart", "-m", mode, "-o", self._options())

    def stop(self, mode: str = "immediate") -> None:
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            self._pg_ctl("stop", "-m", mode, timeout=30)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def is_ready(self) -> bool:
        """`pg_isready` on the TCP port: True when the server accepts connections."""
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port), "-t", "2"],
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    # URLs ------------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username="postgres",
            host=LOOPBACK,
            port=self.port,
            database=database,
        )

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    # Databases -------------------------------------------------------------------------------

    def create_database(self, template: str | None = None, migrate: bool = True) -> str:
        """A new database; a copy of `template`, or migrated to head when `migrate`."""
        name = f"rel_{uuid.uuid4().hex[:12]}"
        source = f' TEMPLATE "{template}"' if template else ""

        async def make() -> None:
            connection = await asyncpg.connect(self.dsn(), timeout=10)
            try:
                await connection.execute(f'CREATE DATABASE "{name}"{source}')
            finally:
                await connection.close()
            if migrate and template is None:
                database = Database.from_url(self.url(name), quiet_settings())
                try:
                    await upgrade(database.engine)
                finally:
                    await database.dispose()

        run_async(make)
        return name

    # Faults ----------------------------------------------------------------------------------

    async def client_backends(self, database: str) -> list[int]:
        """Pids of the client backends connected to `database` (ours excluded), those running
        a statement first: an idle one may be on its way out (its pool closing it)."""
        connection = await asyncpg.connect(self.dsn(database), timeout=5)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND datname = $1 AND pid <> pg_backend_pid() ORDER BY state = 'active' DESC",
                database,
            )
        finally:
            await connection.close()
        return [int(row["pid"]) for row in rows]

    async def kill_a_backend(self, database: str) -> int | None:
        """SIGKILL one client backend: the postmaster then restarts the whole cluster."""
        for pid in await self.client_backends(database):
            if _exited(pid):
                continue  # ended meanwhile, not yet reaped: killing it would crash nothing
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # that backend ended meanwhile (a pool closing a connection)
            return pid
        return None


def _exited(pid: int) -> bool:
    """Whether the process has exited (a zombie awaiting its parent, or gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def quiet_settings(**overrides: object) -> Settings:
    """Settings for test-made databases: no env file, no auto-migration, `overrides` applied."""
    known_settings(overrides)
    return Settings(_env_file=None, auto_migrate=False, **overrides)  # type: ignore[call-arg]
