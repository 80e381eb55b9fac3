"""HTTP (issue 13): `tutorials serve` against the tuned bare app, on loopback.

The tuned limit (`bare_app.py`: bare Starlette routes on asyncpg's pool of 20 with a no-op
reset, orjson, the service's own statements, uvicorn with uvloop and httptools, no access log)
stays up for the whole suite; beside it, one variant of the service at a time:

- `tutorials serve` as shipped: default log level, so its JSON access log is on (written to a
  file, as a service manager would collect it), a pool of 20;
- context: the same with `--log-level warning` (no access log);
- context: the ceiling of the shipped choices, the bare app itself on the service's transport
  (`bare_app.py --service-transport`: h11, which bounds request heads, and the service's JSON
  access line): no design of the routes can beat it while shipping both;
- scaling: `tutorials serve --workers 2` (uvicorn's worker processes, each with its own pool of
  20), otherwise as shipped. Its CPU per request counts every worker. The last table sets its
  figures beside the one-process service's (`--only WORD` keeps the variants whose name has
  WORD, plus the shipped one: `--suite http --only workers`).

Each measurement of the service is paired with one of the bare app taken just before (or after:
the order alternates by round) on the same scenario, against the same scratch database (10,000
seeded rows); ratios are taken within the pair and the median over rounds is reported. The load
generator is `wrk` (installed with apt-get if missing; if that fails, a small asyncio client in
this module takes over and the table says so), keep-alive connections, 1 and 64 of them, for a
fixed time per measurement: `GET /tutorials/{random id}` and `POST /tutorials` (a small JSON
body, no url, so inserts never conflict). Reported: requests/s and its paired ratio, p50 / p99
latency and the p99 ratio, failures (anything but 200/201, socket errors, timeouts), and the
server process's CPU time per request, which depends least on how busy the machine is.
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
CONCURRENCY = (1, 64)
ENDPOINTS = ("GET", "POST")
#: The service's variant the goal is about (the others are context).
SHIPPED = "tutorials serve (as shipped, access log on)"
WORKERS = "tutorials serve --workers 2 (access log on)"
CEILING = "bare app on the service's transport (h11, JSON access log)"
BARE = "bare app (tuned limit)"
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
                        "Host: 127.0.0.1\r\n\r\n"
                    ).encode()
                else:
                    request = (
                        "POST /tutorials HTTP/1.1\r\nHost: 127.0.0.1\r\n"
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


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (`--workers`: the supervisor's workers)."""
    total = process_cpu(pid)[0]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += process_cpu(int(stat.parent.name))[0]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


async def _measure(
    server: Server, wrk: str | None, endpoint: str, connections: int, seconds: float
) -> HttpSample:
    assert server.process is not None
    pid = server.process.pid
    if wrk:  # warm-up: connections, the server's pool and statement caches
        await _load_wrk(wrk, server.url, endpoint, connections, 1)
    else:
        await _load_python(server.port, endpoint, connections, 0.5)
    cpu_before = _tree_cpu(pid)
    if wrk:
        rate, p50, p99, total, failures = await _load_wrk(
            wrk, server.url, endpoint, connections, seconds
        )
    else:
        rate, p50, p99, total, failures = await _load_python(
            server.port, endpoint, connections, seconds
        )
    cpu = _tree_cpu(pid) - cpu_before
    return HttpSample(rate, p50, p99, total, failures, 1e6 * cpu / total if total else 0.0)


def _servers(ctx: Context, database: str) -> tuple[Server, list[Server]]:
    """The tuned bare app, and the service's variants."""
    dsn = ctx.dsn(database)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TUTORIALS_") and k != "DATABASE_URL"
    }
    bare_argv = [sys.executable, "-m", "benchmarks.bare_app", "--dsn", dsn, "--port", "{port}"]
    bare_env = {**base_env, "PYTHONPATH": str(ROOT)}
    bare = Server(BARE, bare_argv, bare_env)
    serve = [sys.executable, "-c", "from tutorials.cli import main; main()", "serve"]
    env = {
        **base_env,
        "DATABASE_URL": dsn,
        "TUTORIALS_POOL_SIZE": str(POOL),
        "TUTORIALS_AUTO_MIGRATE": "false",
    }
    services = [
        Server(SHIPPED, [*serve, "--port", "{port}"], env),
        Server(
            "tutorials serve, --log-level warning (no access log)",
            [*serve, "--port", "{port}", "--log-level", "warning"],
            env,
        ),
        Server(WORKERS, [*serve, "--port", "{port}", "--workers", "2"], env),
        Server(CEILING, [*bare_argv, "--service-transport"], bare_env),
    ]
    if ctx.only:
        services = [s for s in services if s.name == SHIPPED or any(w in s.name for w in ctx.only)]
    return bare, services


Key = tuple[str, str, int]


async def run(ctx: Context) -> list[Table]:
    try:
        import tutorials.api.app  # noqa: F401 - only to know whether the API exists yet
    except ImportError as exc:
        from benchmarks.run import Skipped

        raise Skipped(f"the HTTP API is not importable yet ({exc})") from exc
    mode = ctx.mode
    wrk = await asyncio.to_thread(_wrk)
    samples: dict[Key, list[HttpSample]] = {}
    ratios: dict[Key, list[tuple[float, float, float]]] = {}  # req/s, p99, CPU: mine / base
    load = await asyncio.to_thread(os.getloadavg)
    async with ctx.scratch_database("http") as database:
        await seed(ctx.dsn(database), SEEDED, label="http")
        bare, services = _servers(ctx, database)
        await bare.start()  # up all along: 20 connections, plus one service's 20 at a time
        try:
            for round_index in range(mode.http_rounds):
                turn = round_index % len(services)
                for server in [*services[turn:], *services[:turn]]:
                    await server.start()
                    try:
                        for endpoint in ENDPOINTS:
                            for connections in CONCURRENCY:
                                pair = [bare, server] if round_index % 2 == 0 else [server, bare]
                                measured = {
                                    one.name: await _measure(
                                        one, wrk, endpoint, connections, mode.http_duration
                                    )
                                    for one in pair
                                }
                                base, mine = measured[bare.name], measured[server.name]
                                samples.setdefault((bare.name, endpoint, connections), []).append(
                                    base
                                )
                                key = (server.name, endpoint, connections)
                                samples.setdefault(key, []).append(mine)
                                ratios.setdefault(key, []).append(
                                    (
                                        mine.rate / base.rate if base.rate else 0.0,
                                        mine.p99_ms / base.p99_ms if base.p99_ms else 0.0,
                                        base.server_cpu_us / mine.server_cpu_us
                                        if mine.server_cpu_us
                                        else 0.0,
                                    )
                                )
                    finally:
                        await server.stop()
                ctx.log(f"http: round {round_index + 1} done")
        finally:
            await bare.stop()
    load_after = await asyncio.to_thread(os.getloadavg)
    client = "wrk" if wrk else "the asyncio fallback client"
    return _tables(samples, ratios, bare, services, client, (load, load_after))


def _tables(
    samples: dict[Key, list[HttpSample]],
    ratios: dict[Key, list[tuple[float, float, float]]],
    bare: Server,
    services: list[Server],
    client: str,
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> list[Table]:
    table = Table(
        "HTTP: tutorials serve against the tuned bare app (median of paired rounds)",
        [
            "server",
            "endpoint",
            "conns",
            "req/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "p99 ratio",
            "server CPU us/req",
            "CPU ratio",
            "failures",
        ],
    )
    for endpoint in ENDPOINTS:
        for connections in CONCURRENCY:
            for server in [bare, *services]:
                runs = samples[(server.name, endpoint, connections)]
                paired = ratios.get((server.name, endpoint, connections))
                row: dict[str, Any] = {
                    "server": server.name,
                    "endpoint": f"{endpoint} /tutorials" + ("/{id}" if endpoint == "GET" else ""),
                    "conns": connections,
                    "req/s": median([s.rate for s in runs]),
                    "p50 ms": median([s.p50_ms for s in runs]),
                    "p99 ms": median([s.p99_ms for s in runs]),
                    "server CPU us/req": median([s.server_cpu_us for s in runs]),
                    "failures": sum(s.failures for s in runs),
                }
                if paired:
                    row["ratio"] = round(median([r[0] for r in paired]), 2)
                    row["p99 ratio"] = round(median([r[1] for r in paired]), 2)
                    row["CPU ratio"] = round(median([r[2] for r in paired]), 2)
                table.rows.append(row)
    table.notes.append(
        f"load from {client} on 127.0.0.1, keep-alive; each server in its own process with a "
        f"pool of {POOL}; {SEEDED:,} seeded rows; POST bodies carry no url (no conflicts)"
    )
    table.notes.append(
        "ratio = service req/s ÷ bare req/s; p99 ratio = service p99 ÷ bare p99; CPU ratio = "
        "bare CPU µs/req ÷ service CPU µs/req (each within a pair, median over rounds)"
    )
    table.notes.append(
        "load average (1, 5, 15 min) before: {} after: {}".format(
            *(", ".join(f"{x:.2f}" for x in load) for load in loads)
        )
    )
    verdict = Table(
        f"HTTP goal (issue 13): {SHIPPED} >= 0.8x the bare app, p99 within 2x, no failures",
        ["endpoint", "conns", "ratio", "p99 ratio", "failures", "met"],
    )
    for endpoint in ENDPOINTS:
        for connections in CONCURRENCY:
            paired = ratios.get((SHIPPED, endpoint, connections))
            if not paired:
                continue
            ratio = median([r[0] for r in paired])
            p99 = median([r[1] for r in paired])
            failures = sum(s.failures for s in samples[(SHIPPED, endpoint, connections)])
            verdict.rows.append(
                {
                    "endpoint": endpoint,
                    "conns": connections,
                    "ratio": round(ratio, 2),
                    "p99 ratio": round(p99, 2),
                    "failures": failures,
                    "met": "yes" if ratio >= 0.8 and p99 <= 2 and failures == 0 else "no",
                }
            )
    tables = [table, verdict]
    if any(server.name == WORKERS for server in services):
        tables.append(_scaling(samples))
    return tables


def _scaling(samples: dict[Key, list[HttpSample]]) -> Table:
    """One process against two workers, both as shipped otherwise (medians over rounds)."""
    table = Table(
        "HTTP: tutorials serve, 1 process against --workers 2 (medians over rounds)",
        [
            "endpoint",
            "conns",
            "1 proc req/s",
            "2 workers req/s",
            "scaling",
            "1 proc p99 ms",
            "2 workers p99 ms",
            "1 proc CPU us/req",
            "2 workers CPU us/req",
            "failures",
        ],
    )
    for endpoint in ENDPOINTS:
        for connections in CONCURRENCY:
            one = samples[(SHIPPED, endpoint, connections)]
            two = samples[(WORKERS, endpoint, connections)]
            rate_one, rate_two = median([s.rate for s in one]), median([s.rate for s in two])
            table.rows.append(
                {
                    "endpoint": endpoint,
                    "conns": connections,
                    "1 proc req/s": rate_one,
                    "2 workers req/s": rate_two,
                    "scaling": round(rate_two / rate_one, 2) if rate_one else 0.0,
                    "1 proc p99 ms": median([s.p99_ms for s in one]),
                    "2 workers p99 ms": median([s.p99_ms for s in two]),
                    "1 proc CPU us/req": median([s.server_cpu_us for s in one]),
                    "2 workers CPU us/req": median([s.server_cpu_us for s in two]),
                    "failures": sum(s.failures for s in one + two),
                }
            )
    table.notes.append(
        "2 cores: wrk, PostgreSQL and the bare app's idle process share them with the workers, "
        "so two workers cannot double a CPU-bound one"
    )
    return table
