"""Item 2 of issue 12: a client that stops reading an export loses it within a deadline.

On the real server: as many clients as the export budget (`stream_connections`) start
`GET /tutorials/export` and never read. Within `export_stall_timeout` (2 s here) of filling
their sockets, each export is stopped: its COPY ends, its database connection is closed, and
its HTTP connection is closed too. A new export then runs to the end; before, the stalled
clients held the budget (and their connections) for as long as they stayed.
"""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import httpx
from tests.security.bounds.conftest import Figures, Serve
from tests.security.bounds.wire import LOOPBACK

ROWS = 60_000
STALL = 2
BUDGET = 2  # stream_connections, small so that the test needs few sockets


async def _seed(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO tutorials (name, description) "
            "SELECT 'row ' || n, repeat('x', 300) FROM generate_series(1, $1) AS n",
            ROWS,
        )
    finally:
        await connection.close()


async def _copies(dsn: str) -> int:
    """The service's sessions running a COPY (its exports), seen by the server."""
    connection = await asyncpg.connect(dsn)
    try:
        value = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND state <> 'idle' AND query LIKE 'COPY%'"
        )
    finally:
        await connection.close()
    return int(value)


def _stalled_client(port: int) -> socket.socket:
    """A client with a tiny receive buffer that asks for the export and never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((LOOPBACK, port))
    sock.sendall(f"GET /tutorials/export HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Drain what the server sent; True if it then closed the connection."""
    sock.settimeout(within)
    try:
        while sock.recv(1 << 20):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_stalled_exports_free_their_connections(
    serve: Serve, dsn: str, figures: Figures
) -> None:
    await _seed(dsn)
    settings = {
        "TUTORIALS_EXPORT_STALL_TIMEOUT": str(STALL),
        "TUTORIALS_STREAM_CONNECTIONS": str(BUDGET),
    }
    async with serve(**settings) as service:
        clients = [_stalled_client(service.port) for _ in range(BUDGET)]
        try:
            started = time.monotonic()
            await asyncio.sleep(0.5)
            held = await _copies(dsn)
            freed_after = None
            while time.monotonic() - started < STALL + 10:
                if await _copies(dsn) == 0:
                    freed_after = time.monotonic() - started
                    break
                await asyncio.sleep(0.1)
            async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
                export = await client.get("/tutorials/export", params={"format": "ndjson"})
                ready = (await client.get("/readyz")).status_code
            closed = [await asyncio.to_thread(_closed_by_server, sock, 5) for sock in clients]
        finally:
            for sock in clients:
                sock.close()
        log = service.output()
    lines = export.text.count("\n")
    figures(
        stalled_clients=BUDGET,
        stall_timeout_s=STALL,
        copies_while_stalled=held,
        connections_freed_after_s=freed_after and round(freed_after, 2),
        http_closed=sum(closed),
        new_export_status=export.status_code,
        new_export_rows=lines,
    )
    assert held == BUDGET  # the stalled exports were running...
    assert freed_after is not None and freed_after < STALL + 5  # ...and were stopped
    assert export.status_code == 200 and lines == ROWS
    assert ready == 200
    assert closed == [True] * BUDGET
    assert "export stopped: the client read nothing for 2 s" in log
