"""A quick, bounded throughput figure for the HTTP API: GET /tutorials/{id} and POST /tutorials.

Starts `tutorials serve` on 127.0.0.1 (a free port) against DATABASE_URL, seeds a few rows,
then for each scenario runs N concurrent httpx clients for a fixed time and reports requests
per second, latency percentiles, and the server process's CPU time per request (the figure
that does not depend on how busy the machine or the Python client is). Loopback only, bounded
in time and concurrency.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench \\
        uv run python -m benchmarks.http_quick --concurrency 32 --seconds 3

The database must exist and be at the migrations' head (or pass --migrate). Rows are added by
the POST scenario; use a scratch database.

`--in-process` instead calls the ASGI app directly (no sockets, no uvicorn, no client) from
`--concurrency` tasks and reports the app's own CPU time per request: the figure least
disturbed by whatever else the machine is doing. `--bare` measures the baseline app
(`benchmarks/bare_app.py`) the same way; both on a pool of 20:

    DATABASE_URL=... uv run python -m benchmarks.http_quick --in-process [--bare]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

import httpx
import uvloop

from benchmarks.core import free_port, process_cpu

#: Connections in each app's pool, as in the served benchmark (`httpbench.py`).
POOL = 20


def start_server(port: int, migrate: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TUTORIALS_AUTO_MIGRATE": "true" if migrate else "false"}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tutorials.cli import main; main()",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )


def wait_until_up(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


async def run_scenario(
    name: str,
    request: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    base_url: str,
    concurrency: int,
    seconds: float,
    expected: int,
    server_pid: int,
) -> None:
    latencies: list[float] = []
    failures = 0
    numbers = count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
        # Warm up: open the connections, fill the server's pool and caches.
        await asyncio.gather(*(request(client, next(numbers)) for _ in range(concurrency)))
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = await request(client, next(numbers))
                latencies.append(time.perf_counter() - started)
                if response.status_code != expected:
                    failures += 1

        began = time.perf_counter()
        cpu_before = process_cpu(server_pid)[0]
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        server_cpu = process_cpu(server_pid)[0] - cpu_before
        elapsed = time.perf_counter() - began
    ordered = sorted(latencies)

    def percentile(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    print(
        f"{name:<24} {len(latencies) / elapsed:8.0f} req/s   "
        f"p50 {percentile(0.50):6.1f} ms   p99 {percentile(0.99):6.1f} ms   "
        f"mean {statistics.fmean(latencies) * 1000:6.1f} ms   "
        f"server CPU {server_cpu / len(latencies) * 1e6:5.0f} µs/req   "
        f"n={len(latencies)} failures={failures}"
    )


async def main(concurrency: int, seconds: float, base_url: str, server_pid: int) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        seeded = [
            (await client.post("/tutorials", json={"name": f"bench seed {i}"})).json()
            for i in range(50)
        ]
    ids = [row["tutorial_id"] for row in seeded]
    run_id = time.time_ns()

    async def get_one(client: httpx.AsyncClient, n: int) -> httpx.Response:
        return await client.get(f"/tutorials/{ids[n % len(ids)]}")

    async def post_one(client: httpx.AsyncClient, n: int) -> httpx.Response:
        return await client.post(
            "/tutorials",
            json={"name": f"bench {n}", "url": f"https://bench.example/{run_id}/{n}"},
        )

    print(f"concurrency {concurrency}, {seconds:g} s per scenario, {base_url}")
    for name, request, expected in (
        ("GET /tutorials/{id}", get_one, 200),
        ("POST /tutorials", post_one, 201),
    ):
        await run_scenario(name, request, base_url, concurrency, seconds, expected, server_pid)


async def _lifespan(app: Any) -> Callable[[], Awaitable[None]]:
    """Run an ASGI app's startup; returns its shutdown."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict[str, object]) -> None:
        await outbox.put(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, send))
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started

    async def shutdown() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return shutdown


async def in_process(requests: int, concurrency: int, bare: bool) -> None:
    """CPU time per request of the app alone, called directly as an ASGI application by
    `concurrency` tasks (uvloop, as the servers run). `bare`: the baseline app instead."""
    if bare:
        from benchmarks.bare_app import make_app

        app: Any = make_app(os.environ["DATABASE_URL"], POOL)
    else:
        from tutorials.api import create_app
        from tutorials.settings import Settings

        os.environ.setdefault("TUTORIALS_AUTO_MIGRATE", "false")
        app = create_app(Settings(pool_size=POOL))  # type: ignore[call-arg]
    shutdown = await _lifespan(app)
    ids: list[int] = []
    numbers = count()

    async def call(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        answer: list[object] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, object]) -> None:
            answer.append(message.get("status") or message.get("body", b""))

        await app(scope, receive, send)
        return int(str(answer[0])), bytes(answer[1])  # type: ignore[arg-type]

    async def post() -> None:
        status, body = await call("POST", "/tutorials", b'{"name": "b %d"}' % next(numbers))
        assert status == 201, status
        ids.append(json.loads(body)["tutorial_id"])

    async def get() -> None:
        status, _ = await call("GET", f"/tutorials/{ids[next(numbers) % len(ids)]}")
        assert status == 200, status

    async def measure(name: str, one: Callable[[], Awaitable[None]]) -> None:
        async def worker(share: int) -> None:
            for _ in range(share):
                await one()

        share = max(1, requests // concurrency)
        await asyncio.gather(*(worker(max(1, share // 5)) for _ in range(concurrency)))  # warm
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(share) for _ in range(concurrency)))
        done = share * concurrency
        cpu_per = (time.process_time() - cpu) / done * 1e6
        wall_per = (time.perf_counter() - started) / done * 1e6
        print(f"{name:<24} app CPU {cpu_per:5.0f} µs/req   wall {wall_per:5.0f} µs/req")

    try:
        await measure("POST /tutorials", post)
        await measure("GET /tutorials/{id}", get)
    finally:
        await shutdown()


def _concurrency(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{value}: give 1 to 256 clients")
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=32,
        metavar="N",
        help="concurrent clients, 1 to 256 (default 32)",
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--migrate", action="store_true", help="migrate the database first")
    parser.add_argument("--in-process", action="store_true", help="app CPU per request only")
    parser.add_argument("--bare", action="store_true", help="--in-process: the baseline app")
    parser.add_argument("--requests", type=int, default=20_000, help="--in-process: per test")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        raise SystemExit("set DATABASE_URL to a scratch database")
    if args.in_process:
        uvloop.run(in_process(args.requests, args.concurrency, args.bare))
        raise SystemExit(0)
    if not 0 < args.seconds <= 60:
        raise SystemExit("--seconds must be in (0, 60]")
    port = free_port()
    server = start_server(port, args.migrate)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, server)
        asyncio.run(main(args.concurrency, args.seconds, base, server.pid))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
