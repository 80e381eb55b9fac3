"""Fault-injection plumbing: private PostgreSQL clusters, a dead network, the service in a process.

Everything here breaks things on purpose, so everything here is bounded and local:

- `PrivateCluster` (`tests.clusters`) is a PostgreSQL cluster of the test's own, so a test may
  restart it (`pg_ctl restart -m fast`), crash it (`kill -9` of a backend makes the postmaster
  restart every backend) or cut it off without touching the system server other tests use.
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
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import URL
from tests.clusters import PrivateCluster
from tests.support import client_limits


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


#: Every rule we add carries this comment and the pid of the process that added it, so one left
#: behind by a killed run can be found, and a run in parallel (pytest-xdist workers) keeps its own.
RULE_COMMENT = "tutorials-reliability"


def _rule(port: int, pid: int | None = None) -> list[str]:
    comment = f"{RULE_COMMENT}-{os.getpid() if pid is None else pid}"
    return [
        "INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port),
        "-m", "comment", "--comment", comment, "-j", "DROP",
    ]  # fmt: skip


def _iptables(action: str, port: int, pid: int | None = None) -> None:
    subprocess.run(
        ["iptables", "-w", "5", action, *_rule(port, pid)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def remove_stale_rules() -> int:
    """Delete DROP rules left behind by a run that was killed (ours only, by their comment,
    and only those whose process is gone)."""
    listed = subprocess.run(
        ["iptables", "-w", "5", "-S", "INPUT"], capture_output=True, text=True, timeout=30
    )
    removed = 0
    for line in listed.stdout.splitlines():
        if f"--comment {RULE_COMMENT}-" not in line or "--dport" not in line:
            continue
        pid = int(line.split(f"--comment {RULE_COMMENT}-", 1)[1].split()[0])
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            continue  # another live run's rule (a parallel worker): not ours to remove
        _iptables("-D", int(line.split("--dport", 1)[1].split()[0]), pid)
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
    #: How long the first connection may take: the server is up, the machine may be busy.
    startup: float = 10.0
    #: How long `SELECT 1` on the held connection may take before the server counts as down.
    #: A restart or a crash ends the held connection at once, so a long bound delays nothing;
    #: a short one would call a busy machine a fault.
    held_within: float = 2.0
    down_at: list[float] = field(default_factory=list)
    up_at: list[float] = field(default_factory=list)
    #: Set each time the server comes back after being seen down.
    came_back: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event, deadline: float) -> None:
        held = await self._first_connection(min(deadline, time.monotonic() + self.startup))
        if held is None:
            raise AssertionError(f"the server did not answer within {self.startup} s of the start")
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if held is not None:
                    if not await _still_answers(held, self.held_within):
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

    async def wait_back(self, since: float, within: float) -> None:
        """Until the server came back up after `since` (or `within` seconds passed)."""
        until = time.monotonic() + within
        while self.ready_after(since) is None and (left := until - time.monotonic()) > 0:
            self.came_back.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.came_back.wait(), left)

    async def _first_connection(self, until: float) -> asyncpg.Connection | None:
        # The server is up when the prober starts, but the load starts with it: on two busy
        # cores a first connection can take longer than a probe's 0.5 s, which is not a fault.
        while True:
            held = await _connect_and_check(self.dsn, within=max(0.5, until - time.monotonic()))
            if held is not None or time.monotonic() >= until:
                return held
            await asyncio.sleep(self.interval)

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
