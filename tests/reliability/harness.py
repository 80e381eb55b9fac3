"""Fault-injection plumbing: private PostgreSQL clusters, a dead network, the service in a process.

Everything here breaks things on purpose, so everything here is bounded and local:

- `PrivateCluster` is a PostgreSQL 15 cluster of the test's own (initdb in a temporary
  directory, a free loopback port), so a test may restart it (`pg_ctl restart -m fast`), crash
  it (`kill -9` of a backend makes the postmaster restart every backend) or cut it off without
  touching the system server other tests use. As root (CI), PostgreSQL's tools run as the
  `postgres` user, because the server refuses to run as root.
- `dropped_packets(port)` drops loopback TCP packets to one port with iptables (a dead network,
  not a refused connection), and always removes its rule.
- the service in a subprocess is `tests.serving`'s, shared with every suite: a test sees the
  real service (uvicorn, lifespan, pool) and can prove it never dies or resets a connection
  while the database does.
- `Outcomes` / `Prober` hold the figures each fault test prints: requests sent, faults
  injected, acknowledged writes, rows found, recovery time.

Loops are bounded by a count *and* a deadline everywhere: a fault test that hangs is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import URL
from tests.serving import LOOPBACK, known_settings
from tests.support import client_limits, free_port, pg_bindir, run_async

from tutorials.db.migrate import upgrade
from tutorials.db.session import Database
from tutorials.settings import Settings

PG_BIN = pg_bindir()
ROOT = Path(__file__).resolve().parents[2]


def private_clusters_available() -> str | None:
    """None when we can run a cluster of our own; otherwise why not (a skip reason)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as postgres"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return None


def iptables_available() -> str | None:
    """None when iptables can drop loopback packets here; otherwise why not (a skip reason)."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install -y iptables)"
    if os.geteuid() != 0:
        return "iptables needs root"
    probe = subprocess.run(
        ["iptables", "-w", "5", "-L", "INPUT", "-n"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"iptables cannot list rules here: {probe.stderr.strip()[:200]}"
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


@dataclass(frozen=True)
class PrivateDb:
    """A database of the test's own on a private cluster, in the forms tests want it."""

    cluster: PrivateCluster
    name: str

    @property
    def url(self) -> URL:
        return self.cluster.url(self.name)

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    @property
    def url_text(self) -> str:
        return self.url.render_as_string(hide_password=False)


#: The `figures` fixture's type: `figures(sent=..., faults_injected=..., recovery_ms=...)`.
Figures = Callable[..., None]


def quiet_settings(**overrides: object) -> Settings:
    """Settings for test-made databases: no env file, no auto-migration, `overrides` applied."""
    known_settings(overrides)
    return Settings(_env_file=None, auto_migrate=False, **overrides)  # type: ignore[call-arg]


async def _connect_and_check(dsn: str, within: float = 0.5) -> asyncpg.Connection | None:
    """A fresh connection that has answered `SELECT 1`, or None."""
    # Any failure means "not up" (a probe cut off mid-way can even leave asyncpg's protocol in
    # an internal error state): the probe never fails the test itself.
    try:
        connection = await asyncpg.connect(dsn, timeout=within)
    except Exception:
        return None
    if await _still_answers(connection, within):
        return connection
    connection.terminate()
    return None


async def _still_answers(connection: asyncpg.Connection, within: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(connection.fetchval("SELECT 1"), within)
    except Exception:
        return False
    return True


async def scalar(dsn: str, query: str, *args: object) -> object:
    """One value from the database, behind the service's back."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


async def count_rows(dsn: str, where: str = "true", *args: object) -> int:
    value = await scalar(dsn, f"SELECT count(*) FROM tutorials WHERE {where}", *args)
    assert isinstance(value, int)
    return value


async def open_transactions(dsn: str, application_name: str | None = None) -> int:
    """Sessions of this database idle in a transaction (a leaked transaction), ours excluded."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
    )
    args: tuple[object, ...] = ()
    if application_name is not None:
        query += " AND application_name = $1"
        args = (application_name,)
    value = await scalar(dsn, query, *args)
    assert isinstance(value, int)
    return value


async def sessions_of(dsn: str, application_name: str) -> list[dict[str, object]]:
    """The server's view of a client's connections: pid, state, query."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
    finally:
        await connection.close()
    return [dict(row) for row in rows]


# A dead network --------------------------------------------------------------------------------


#: Every rule we add carries this comment, so one left behind by a killed run can be found.
RULE_COMMENT = "tutorials-reliability"


def _rule(port: int) -> list[str]:
    return [
        "INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port),
        "-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP",
    ]  # fmt: skip


def _iptables(action: str, port: int) -> None:
    subprocess.run(
        ["iptables", "-w", "5", action, *_rule(port)], check=True, capture_output=True, timeout=30
    )


def remove_stale_rules() -> int:
    """Delete DROP rules a previous, killed run left behind (ours only, by their comment)."""
    listed = subprocess.run(
        ["iptables", "-w", "5", "-S", "INPUT"], capture_output=True, text=True, timeout=30
    )
    removed = 0
    for line in listed.stdout.splitlines():
        if f"--comment {RULE_COMMENT}" in line and "--dport" in line:
            port = int(line.split("--dport", 1)[1].split()[0])
            _iptables("-D", port)
            removed += 1
    return removed


@contextlib.contextmanager
def dropped_packets(port: int) -> Iterator[None]:
    """Drop every loopback TCP packet to `port` (only a private cluster's), and always undo it."""
    _iptables("-I", port)
    try:
        yield
    finally:
        _iptables("-D", port)


# The service in a subprocess ------------------------------------------------------------------


# Figures ----------------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """What clients saw during a fault: every answer classified, with when it arrived."""

    started_at: float = field(default_factory=time.monotonic)
    sent: int = 0
    ok: int = 0
    unavailable: int = 0
    #: Anything that is neither a success nor an honest "try again": the test fails on these.
    bad: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    success_times: list[float] = field(default_factory=list)
    failure_times: list[float] = field(default_factory=list)

    def success(self, key: str | None = None) -> None:
        self.ok += 1
        self.success_times.append(time.monotonic())
        if key is not None:
            self.acknowledged.add(key)

    def honest_failure(self) -> None:
        self.unavailable += 1
        self.failure_times.append(time.monotonic())

    def bad_answer(self, what: str) -> None:
        self.bad.append(what)
        self.failure_times.append(time.monotonic())

    def first_success_after(self, moment: float) -> float | None:
        later = [t for t in self.success_times if t >= moment]
        return min(later) if later else None


@dataclass
class Prober:
    """Watches the server through one held connection; remembers when it went down and came back.

    While the server is up the prober keeps a connection open and runs `SELECT 1` on it every
    `interval`: a restart or a crash restart terminates every backend, so the held connection
    always sees the fault, however quickly the server is back (a crash recovery can take less
    time than one polling interval, so fresh connections alone can miss it). While it is down,
    the prober tries a fresh connection every `interval`; the first that answers marks it up.
    """

    dsn: str
    interval: float = 0.01
    down_at: list[float] = field(default_factory=list)
    up_at: list[float] = field(default_factory=list)
    #: Set each time the server comes back after being seen down.
    came_back: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event, deadline: float) -> None:
        held = await _connect_and_check(self.dsn)
        if held is None:
            raise AssertionError("the server was down before the prober started")
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if held is not None:
                    if not await _still_answers(held):
                        self.down_at.append(time.monotonic())
                        held.terminate()
                        held = None
                else:
                    held = await _connect_and_check(self.dsn)
                    if held is not None:
                        self.up_at.append(time.monotonic())
                        self.came_back.set()
                await asyncio.sleep(self.interval)
        finally:
            if held is not None:
                held.terminate()

    async def wait_back(self, within: float) -> None:
        """Until the server was seen down and then up again (or `within` seconds passed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.came_back.wait(), within)

    def ready_after(self, moment: float) -> float | None:
        later = [t for t in self.up_at if t >= moment]
        return min(later) if later else None


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}"


# Injected database errors ----------------------------------------------------------------------

#: A trigger that makes the next `failures` writes to `tutorials` fail with a real SQLSTATE raised
#: by the server. Attempts are counted in a sequence, which rollbacks do not undo.
FAULT_TRIGGER_SQL = """
CREATE TABLE rel_fault_plan (sqlstate text NOT NULL, failures integer NOT NULL);
CREATE SEQUENCE rel_fault_attempts;
CREATE FUNCTION rel_inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    plan record;
    attempt bigint;
BEGIN
    SELECT * INTO plan FROM rel_fault_plan LIMIT 1;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    attempt := nextval('rel_fault_attempts');
    IF attempt <= plan.failures THEN
        RAISE EXCEPTION 'injected fault % of %', attempt, plan.failures
            USING ERRCODE = plan.sqlstate;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER rel_inject_fault BEFORE INSERT OR UPDATE ON tutorials
    FOR EACH ROW EXECUTE FUNCTION rel_inject_fault();
"""


async def install_fault_trigger(dsn: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(FAULT_TRIGGER_SQL)
    finally:
        await connection.close()


async def plan_faults(dsn: str, sqlstate: str, failures: int) -> None:
    """Make the next `failures` writes fail with `sqlstate` (and reset the attempt counter)."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        async with connection.transaction():
            await connection.execute("DELETE FROM rel_fault_plan")
            await connection.execute(
                "INSERT INTO rel_fault_plan VALUES ($1, $2)", sqlstate, failures
            )
            await connection.execute("ALTER SEQUENCE rel_fault_attempts RESTART")
    finally:
        await connection.close()


async def fault_attempts(dsn: str) -> int:
    """How many writes reached the trigger since the last `plan_faults`."""
    value = await scalar(
        dsn, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM rel_fault_attempts"
    )
    assert isinstance(value, int)
    return value


# HTTP load ---------------------------------------------------------------------------------------


def classify_answer(outcomes: Outcomes, response: httpx.Response, key: str | None) -> None:
    """2xx: acknowledged; 503 with Retry-After: honest; anything else: a bad answer."""
    if 200 <= response.status_code < 300:
        outcomes.success(key)
    elif response.status_code == 503 and response.headers.get("retry-after"):
        outcomes.honest_failure()
    else:
        outcomes.bad_answer(f"{response.status_code}: {response.text[:200]}")


async def http_write_load(
    base_url: str,
    outcomes: Outcomes,
    stop: asyncio.Event,
    *,
    clients: int = 32,
    per_client: int = 300,
    deadline: float,
    prefix: str = "http",
    headers: Mapping[str, str] | None = None,
) -> None:
    """`clients` concurrent writers POSTing new tutorials until `stop`, a count, or `deadline`."""
    limits = client_limits(clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=15, limits=limits, headers=dict(headers or {})
    ) as http:

        async def writer(index: int) -> None:
            for number in range(per_client):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                name = f"{prefix}-{index}-{number}"
                outcomes.sent += 1
                try:
                    response = await http.post("/tutorials", json={"name": name})
                except httpx.TransportError as exc:
                    outcomes.bad_answer(f"transport: {type(exc).__name__}: {exc}"[:200])
                    await asyncio.sleep(0.01)
                    continue
                classify_answer(outcomes, response, name)
                if response.status_code == 503:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(writer(index) for index in range(clients)))
