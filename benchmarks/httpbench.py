"""HTTP: `tutorials serve` against a bare Starlette + raw asyncpg handler, on loopback.

Both servers run in their own process on 127.0.0.1 against the same scratch database (10,000
seeded rows, a pool of 20 each), one at a time, alternating every round. The load generator is
`wrk` (installed with apt-get if missing; if that fails, a small asyncio client in this module
takes over and the table says so), with keep-alive connections, for a fixed time per
measurement: `GET /tutorials/{random id}` and `POST /tutorials` (a small JSON body, no url, so
inserts never conflict). Reported: requests/s (median of rounds), p50 / p99 latency, failures
(anything but 200/201), and the server process's CPU time per request, which does not depend
on how busy the rest of the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.core import (
    Context,
    Table,
    free_port,
    http_status,
    median,
    percentile,
    process_cpu,
)
from benchmarks.seed import seed

NAME = "http"
SEEDED = 10_000
POOL = 20
CONCURRENCY = (1, 32)
POST_BODY = '{"name": "bench post", "description": "posted by the benchmark", "tags": ["python"]}'
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class HttpSample:
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int
    server_cpu_us: float


class Server:
    """A server process on a free loopback port; stopped with SIGTERM (SIGKILL after 10 s)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.argv = [arg.replace("{port}", str(self.port)) for arg in argv]
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            self.argv, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {tail}")
            if await http_status(self.port, "/readyz") == 200:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready in 60 s")

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


def _wrk() -> str | None:
    """`wrk`, installed from Debian's packages if missing (root only); None if not to be had."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    for argv in (
        ["apt-get", "install", "-y", "-q", "wrk"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "wrk"],
    ):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(argv, capture_output=True, timeout=300, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


_WRK_GET = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/tutorials/" .. math.random(1, {rows}))
end
"""
_WRK_POST = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _parse_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


async def _load_wrk(
    wrk: str, url: str, endpoint: str, connections: int, seconds: float
) -> tuple[float, float, float, int, int]:
    script = _WRK_GET.format(rows=SEEDED) if endpoint == "GET" else _WRK_POST.format(body=POST_BODY)
    target = url + ("/tutorials/1" if endpoint == "GET" else "/tutorials")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        result = await asyncio.to_thread(
            subprocess.run,
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                lua.name,
                target,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    out = result.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _parse_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _parse_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = (int(bad.group(1)) if bad else 0) + (
        sum(int(g) for g in errors.groups()) if errors else 0
    )
    return rate, p50, p99, total, failures


async def _load_python(
    port: int, endpoint: str, connections: int, seconds: float
) -> tuple[float, float, float, int, int]:
    """Fallback load generator: keep-alive HTTP/1.1 on raw asyncio streams."""
    body = POST_BODY.encode()
    latencies: list[int] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                if endpoint == "GET":
                    request = (
                        f"GET /tutorials/{random.randint(1, SEEDED)} HTTP/1.1\r\n"
                        "Host: bench\r\n\r\n"
                    ).encode()
                else:
                    request = (
                        "POST /tutorials HTTP/1.1\r\nHost: bench\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode() + body
                started = time.perf_counter_ns()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter_ns() - started)
                if head.split()[1] not in (b"200", b"201"):
                    failures += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    return (
        len(latencies) / elapsed,
        percentile(latencies, 50) / 1e6,
        percentile(latencies, 99) / 1e6,
        len(latencies),
        failures,
    )


async def _measure(
    server: Server, wrk: str | None, endpoint: str, connections: int, seconds: float
) -> HttpSample:
    assert server.process is not None
    pid = server.process.pid
    if wrk:  # warm-up: connections, the server's pool and statement caches
        await _load_wrk(wrk, server.url, endpoint, connections, 1)
    else:
        await _load_python(server.port, endpoint, connections, 0.5)
    cpu_before = process_cpu(pid)[0]
    if wrk:
        rate, p50, p99, total, failures = await _load_wrk(
            wrk, server.url, endpoint, connections, seconds
        )
    else:
        rate, p50, p99, total, failures = await _load_python(
            server.port, endpoint, connections, seconds
        )
    cpu = process_cpu(pid)[0] - cpu_before
    return HttpSample(rate, p50, p99, total, failures, 1e6 * cpu / total if total else 0.0)


def _servers(ctx: Context, database: str) -> list[Server]:
    dsn = ctx.dsn(database)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TUTORIALS_")}
    bare = Server(
        "bare Starlette + asyncpg",
        [sys.executable, "-m", "benchmarks.bare_app", "--dsn", dsn, "--port", "{port}"],
        {**base_env, "PYTHONPATH": str(ROOT)},
    )
    service = Server(
        "tutorials serve",
        [
            sys.executable,
            "-c",
            "from tutorials.cli import main; main()",
            "serve",
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ],
        {
            **base_env,
            "DATABASE_URL": dsn,
            "TUTORIALS_POOL_SIZE": str(POOL),
            "TUTORIALS_MAX_OVERFLOW": "0",
            "TUTORIALS_AUTO_MIGRATE": "false",
        },
    )
    return [bare, service]


async def run(ctx: Context) -> list[Table]:
    try:
        import tutorials.api.app  # noqa: F401 - only to know whether the API exists yet
    except ImportError as exc:
        from benchmarks.run import Skipped

        raise Skipped(f"the HTTP API is not importable yet ({exc})") from exc
    mode = ctx.mode
    wrk = await asyncio.to_thread(_wrk)
    samples: dict[tuple[str, str, int], list[HttpSample]] = {}
    async with ctx.scratch_database("http") as database:
        await seed(ctx.dsn(database), SEEDED, label="http")
        servers = _servers(ctx, database)
        for round_index in range(mode.http_rounds):
            order = servers if round_index % 2 == 0 else servers[::-1]
            for server in order:
                await server.start()
                try:
                    for endpoint in ("GET", "POST"):
                        for connections in CONCURRENCY:
                            sample = await _measure(
                                server, wrk, endpoint, connections, mode.http_duration
                            )
                            key = (server.name, endpoint, connections)
                            samples.setdefault(key, []).append(sample)
                finally:
                    await server.stop()
            ctx.log(f"http: round {round_index + 1} done")
    return _tables(samples, servers, "wrk" if wrk else "the asyncio fallback client")


def _tables(
    samples: dict[tuple[str, str, int], list[HttpSample]], servers: list[Server], client: str
) -> list[Table]:
    baseline = servers[0].name
    table = Table(
        "HTTP: tutorials serve vs a bare Starlette + asyncpg handler (median of rounds)",
        [
            "server",
            "endpoint",
            "connections",
            "req/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "server CPU us/req",
            "failures",
        ],
    )
    for endpoint in ("GET", "POST"):
        for connections in CONCURRENCY:
            base = median([s.rate for s in samples[(baseline, endpoint, connections)]])
            for server in servers:
                runs = samples[(server.name, endpoint, connections)]
                rate = median([s.rate for s in runs])
                row: dict[str, Any] = {
                    "server": server.name,
                    "endpoint": f"{endpoint} /tutorials" + ("/{id}" if endpoint == "GET" else ""),
                    "connections": connections,
                    "req/s": rate,
                    "ratio": round(rate / base, 2) if base else None,
                    "p50 ms": median([s.p50_ms for s in runs]),
                    "p99 ms": median([s.p99_ms for s in runs]),
                    "server CPU us/req": median([s.server_cpu_us for s in runs]),
                    "failures": sum(s.failures for s in runs),
                }
                table.rows.append(row)
    table.notes.append(
        f"load from {client} on 127.0.0.1, keep-alive; each server in its own process with a "
        f"pool of {POOL}; {SEEDED:,} seeded rows; POST bodies carry no url (no conflicts)"
    )
    return [table]
