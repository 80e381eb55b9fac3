"""Scaling paths: what read replicas, read-your-writes and PgBouncer mode cost. Standalone:

    ./dev python -m benchmarks.routing                  # everything, ~3 minutes
    ./dev python -m benchmarks.routing --only hotpaths --seconds 3 --rounds 5
    PYTHONPATH=/tmp/core/src ./dev python -m benchmarks.routing --only hotpaths
        # the same hot paths on another checkout's code (e.g. `git archive core src`), for the
        # "no replicas: same speed" comparison; runs only what that code has

Suites (all on loopback, on servers made for the run and removed after it):

- `hotpaths`: the service's get / insert / update / list page on a `Database` without replicas
  (on a primary alone, and on one with a replica streaming from it: what streaming costs the
  primary) and with one (the embedded server and a streaming replica, as `tutorials db start
  --replicas 1` makes them), 10,000 rows, pool 20, at concurrency 1 and 32. Reports
  operations per second, the client process's CPU per operation and p50 latency, the median
  of `--rounds` rounds whose order rotates. With replicas, reads go to the replica and every
  write reads its commit LSN (one more round trip).
- `checkout`: the design choice for knowing a replica is fresh enough: the background poll
  (what the service does: one query per replica per 100 ms, nothing per read) against asking
  the replica at checkout (one more round trip per read): a get by id on the replica with and
  without a `SELECT pg_last_wal_replay_lsn()` before it.
- `pgbouncer`: a get by id through a real PgBouncer (transaction mode) in the ways the timeouts
  can be carried: none per statement (the role's defaults: `ALTER ROLE ... SET`, what the
  service does for single statements), `SET LOCAL` folded into `BEGIN` (what it does for
  transactions), and `SET LOCAL` as a statement of its own; and directly, for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

import tutorials
from tutorials import service
from tutorials.db.database import Database
from tutorials.db.embedded import EmbeddedPostgres
from tutorials.db.migrate import upgrade
from tutorials.db.url import parse_database_url
from tutorials.schemas import TutorialPatch
from tutorials.settings import Settings

ROWS = 10_000
POOL = 20
CONCURRENCY = (1, 32)
COLUMNS = "tutorial_id, name, url, description, tags, created_at, updated_at, version"
GET = f"SELECT {COLUMNS} FROM tutorials WHERE tutorial_id = $1"
#: The checkout root, for the PgBouncer harness the tests use (tests/pgbouncer/harness.py).
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Sample:
    ops: int
    seconds: float
    cpu: float
    latencies: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.ops * 1e6

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000


async def drive(op: Callable[[int], Awaitable[Any]], tasks: int, seconds: float) -> Sample:
    """`op(task)` in `tasks` tasks for `seconds` (after a short warm-up), timed one by one."""
    latencies: list[float] = []
    stop_at = 0.0

    async def loop(task: int, record: bool) -> int:
        count = 0
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await op(task)
            if record:
                latencies.append(time.perf_counter() - started)
            count += 1
        return count

    stop_at = time.monotonic() + min(0.3, seconds / 4)
    await asyncio.gather(*(loop(task, False) for task in range(tasks)))
    cpu, wall = time.process_time(), time.monotonic()
    stop_at = wall + seconds
    counts = await asyncio.gather(*(loop(task, True) for task in range(tasks)))
    return Sample(sum(counts), time.monotonic() - wall, time.process_time() - cpu, latencies)


# --- Servers -------------------------------------------------------------------------------------


@dataclass
class Cluster:
    base: Path
    server: EmbeddedPostgres
    primary: str
    replica: str | None


def start_cluster(replicas: int) -> Cluster:
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    base = Path(tempfile.mkdtemp(prefix="tutorials-bench-routing-", dir=parent))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "root")
    try:
        start = inspect.signature(server.start).parameters
        primary = server.start(replicas=replicas) if "replicas" in start else server.start()
        found = server.replica_urls() if replicas and hasattr(server, "replica_urls") else []
    except BaseException:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    return Cluster(base, server, primary, found[0] if found else None)


def stop_cluster(cluster: Cluster) -> None:
    cluster.server.stop()
    shutil.rmtree(cluster.base, ignore_errors=True)


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, auto_migrate=False, pool_size=POOL, **overrides)  # type: ignore[call-arg]


async def fresh_database(cluster: Cluster, name: str) -> tuple[str, str | None]:
    primary = parse_database_url(cluster.primary)
    connection = await asyncpg.connect(primary.dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = primary.with_database(name)
    database = Database(url, settings())
    try:
        await upgrade(database.engine)
    finally:
        await database.dispose()
    connection = await asyncpg.connect(url.dsn)
    try:
        await connection.execute(
            "INSERT INTO tutorials (name, url, description, tags) SELECT 'seeded ' || n, "
            "'https://example.com/seed/' || n, 'a row to read', ARRAY['python', 'sql'] "
            "FROM generate_series(1, $1) AS n",
            ROWS,
        )
        await connection.execute("VACUUM (ANALYZE) tutorials")
    finally:
        await connection.close()
    replica = None
    if cluster.replica is not None:
        replica = parse_database_url(cluster.replica).with_database(name).dsn
        deadline = time.monotonic() + 30
        while True:  # until the replica has the rows
            try:
                probe = await asyncpg.connect(replica)
                try:
                    if await probe.fetchval("SELECT count(*) FROM tutorials") == ROWS:
                        break
                finally:
                    await probe.close()
            except asyncpg.InvalidCatalogNameError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the replica never caught up")
            await asyncio.sleep(0.05)
    return url.dsn, replica


# --- hotpaths ------------------------------------------------------------------------------------


#: Unique numbers for inserted urls, across configurations and rounds.
_SERIAL = iter(range(10**12))


def hot_ops(database: Database) -> dict[str, Callable[[int], Awaitable[Any]]]:
    serial = _SERIAL
    owned: dict[int, list[int]] = {}

    async def get(task: int) -> None:
        await service.find(database, random.randint(1, ROWS))

    async def insert(task: int) -> None:
        number = next(serial)
        data = service.new_tutorial(
            {"name": f"bench {number}", "url": f"https://example.com/b/{os.getpid()}/{number}"}
        )
        await service.create(database, data)

    async def update(task: int) -> None:
        ids = owned.setdefault(task, [task * 50 + i + 1 for i in range(50)])
        tutorial_id = ids[next(serial) % len(ids)]
        await service.update(database, tutorial_id, TutorialPatch(description=f"d{next(serial)}"))

    async def page(task: int) -> None:
        await service.list_page(database, limit=20)

    return {"get": get, "insert": insert, "update": update, "page": page}


async def hotpaths(args: argparse.Namespace) -> list[str]:
    """Three databases: a primary alone (the comparison with code that has no routing), the
    same without routing but with a replica streaming from it (what streaming costs the
    primary), and with routing to that replica."""
    can_route = "replicas" in inspect.signature(Database.__init__).parameters
    clusters = [start_cluster(0)]
    try:
        alone, _ = await fresh_database(clusters[0], "bench_routing")
        configs: dict[str, Callable[[], Database]] = {
            "no replicas": lambda: Database.from_url(alone, settings())
        }
        if can_route:
            clusters.append(start_cluster(1))
            primary, replica = await fresh_database(clusters[1], "bench_routing")
            assert replica is not None
            configs["no routing, a replica streaming"] = lambda: Database.from_url(
                primary, settings()
            )
            configs["one replica"] = lambda: Database.from_url(primary, settings(), [replica])
        results: dict[tuple[str, str, int], list[Sample]] = {}
        names = list(configs)
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                database = configs[name]()
                try:
                    if database.__dict__.get("replicas") is not None:
                        await database.replicas.ready(within=10)  # type: ignore[attr-defined]
                    for op_name, op in hot_ops(database).items():
                        for tasks in CONCURRENCY:
                            sample = await drive(op, tasks, args.seconds)
                            results.setdefault((name, op_name, tasks), []).append(sample)
                finally:
                    await database.dispose()
                print(f"  round {round_ + 1}: {name} done", file=sys.stderr)
    finally:
        for cluster in clusters:
            stop_cluster(cluster)
    lines = [
        f"### hotpaths ({tutorials.__file__})",
        "",
        "| database | op | tasks | ops/s | CPU µs/op | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for (name, op_name, tasks), samples in results.items():
        lines.append(
            f"| {name} | {op_name} | {tasks} | "
            f"{statistics.median(s.per_second for s in samples):,.0f} | "
            f"{statistics.median(s.cpu_us for s in samples):,.0f} | "
            f"{statistics.median(s.p50_ms for s in samples):.2f} |"
        )
    return lines


# --- checkout ------------------------------------------------------------------------------------


async def checkout(args: argparse.Namespace) -> list[str]:
    cluster = start_cluster(1)
    try:
        _, replica = await fresh_database(cluster, "bench_checkout")
        assert replica is not None
        pool = await asyncpg.create_pool(replica, min_size=POOL, max_size=POOL)
        try:

            async def plain(task: int) -> None:
                async with pool.acquire() as connection:
                    await connection.fetchrow(GET, random.randint(1, ROWS))

            async def asked(task: int) -> None:
                async with pool.acquire() as connection:
                    await connection.fetchval("SELECT pg_last_wal_replay_lsn()")
                    await connection.fetchrow(GET, random.randint(1, ROWS))

            results: dict[tuple[str, int], list[Sample]] = {}
            for _ in range(args.rounds):
                for name, op in (("poll (nothing per read)", plain), ("ask at checkout", asked)):
                    for tasks in CONCURRENCY:
                        sample = await drive(op, tasks, args.seconds)
                        results.setdefault((name, tasks), []).append(sample)
        finally:
            await pool.close()
    finally:
        stop_cluster(cluster)
    title = "### replica freshness: poll vs ask at checkout (get by id on the replica)"
    return _table(title, results)


def _table(title: str, results: dict[tuple[str, int], list[Sample]]) -> list[str]:
    """A Markdown table of `results` (how, tasks) -> samples: medians of ops/s, CPU, p50."""
    lines = [title, "", "| how | tasks | ops/s | CPU µs/op | p50 ms |", "|---|---|---|---|---|"]
    for (name, tasks), samples in results.items():
        lines.append(
            f"| {name} | {tasks} | {statistics.median(s.per_second for s in samples):,.0f} | "
            f"{statistics.median(s.cpu_us for s in samples):,.0f} | "
            f"{statistics.median(s.p50_ms for s in samples):.2f} |"
        )
    return lines


# --- pgbouncer -----------------------------------------------------------------------------------


async def pgbouncer(args: argparse.Namespace) -> list[str]:
    sys.path.insert(0, REPOSITORY)
    from tests.pgbouncer.harness import PgBouncer, unavailable

    reason = unavailable()
    if reason is not None:
        return [f"### pgbouncer: skipped ({reason})"]
    cluster = start_cluster(0)
    try:
        primary, _ = await fresh_database(cluster, "bench_bouncer")
        server = parse_database_url(primary).sqlalchemy_url()
        bouncer = PgBouncer(server.set(database="postgres"), pool_size=POOL)
        bouncer.start()
        try:
            through = bouncer.url("bench_bouncer")
            dsn = parse_database_url(through.render_as_string(hide_password=False)).dsn
            results = await _bouncer_modes(args, dsn, parse_database_url(primary).dsn)
        finally:
            bouncer.stop()
    finally:
        stop_cluster(cluster)
    return _table("### PgBouncer (transaction mode): carrying the timeouts (get by id)", results)


SETS = (
    "SET LOCAL statement_timeout = 15000; SET LOCAL lock_timeout = 5000; "
    "SET LOCAL idle_in_transaction_session_timeout = 60000"
)


async def _bouncer_modes(
    args: argparse.Namespace, bounced: str, direct: str
) -> dict[tuple[str, int], list[Sample]]:
    pools = {
        "direct, startup parameters": await asyncpg.create_pool(
            direct,
            min_size=POOL,
            max_size=POOL,
            server_settings={"statement_timeout": "15000", "lock_timeout": "5000"},
        ),
        "pgbouncer": await asyncpg.create_pool(
            bounced, min_size=POOL, max_size=POOL, statement_cache_size=0
        ),
    }
    try:
        direct_pool, bounced_pool = pools["direct, startup parameters"], pools["pgbouncer"]

        async def on_direct(task: int) -> None:
            async with direct_pool.acquire() as connection:
                await connection.fetchrow(GET, random.randint(1, ROWS))

        async def role_defaults(task: int) -> None:
            async with bounced_pool.acquire() as connection:
                await connection.fetchrow(GET, random.randint(1, ROWS))

        async def folded(task: int) -> None:
            async with bounced_pool.acquire() as connection:
                await connection.execute(f"BEGIN; {SETS}")
                await connection.fetchrow(GET, random.randint(1, ROWS))
                await connection.execute("COMMIT")

        async def separate(task: int) -> None:
            async with bounced_pool.acquire() as connection, connection.transaction():
                await connection.execute(SETS)
                await connection.fetchrow(GET, random.randint(1, ROWS))

        modes = {
            "direct (startup parameters)": on_direct,
            "PgBouncer, role defaults (0 extra round trips)": role_defaults,
            "PgBouncer, SET LOCAL folded into BEGIN (+2)": folded,
            "PgBouncer, BEGIN; SET LOCAL; ...; COMMIT (+3)": separate,
        }
        results: dict[tuple[str, int], list[Sample]] = {}
        for _ in range(args.rounds):
            for name, op in modes.items():
                for tasks in CONCURRENCY:
                    sample = await drive(op, tasks, args.seconds)
                    results.setdefault((name, tasks), []).append(sample)
        return results
    finally:
        for pool in pools.values():
            await pool.close()


SUITES = {"hotpaths": hotpaths, "checkout": checkout, "pgbouncer": pgbouncer}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=sorted(SUITES), action="append")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lines: list[str] = []
    for name in args.only or list(SUITES):
        print(f"{name} ...", file=sys.stderr)
        lines += [*await SUITES[name](args), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
