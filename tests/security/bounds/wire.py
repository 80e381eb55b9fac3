"""Raw HTTP/1.1 on a loopback socket: what a hostile client sends, byte by byte.

httpx cannot send half a request, stop reading, or hold a header of 100 MB; these helpers
can. Every wait is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"


@dataclass
class Answer:
    """A parsed HTTP response (or what came before the connection closed)."""

    status: int
    headers: dict[str, str]
    body: bytes
    raw_size: int
    seconds: float = 0.0
    closed: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def problem(self) -> dict[str, object]:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), (
            self.status,
            self.headers,
            self.body[:300],
        )
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


def parse(raw: bytes, seconds: float = 0.0, closed: bool = False) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Answer(status, headers, body, len(raw), seconds, closed)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 5)


async def read_answer(reader: asyncio.StreamReader, within: float) -> Answer:
    """Read one response: its head, then Content-Length bytes (or up to the close)."""
    started = time.monotonic()
    raw = b""
    closed = False
    try:
        async with asyncio.timeout(within):
            while b"\r\n\r\n" not in raw:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                raw += chunk
            head = parse(raw)
            length = int(head.headers.get("content-length", "-1"))
            while not closed and length >= 0 and len(raw.partition(b"\r\n\r\n")[2]) < length:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                raw += chunk
    except (TimeoutError, ConnectionError):
        pass
    return parse(raw, time.monotonic() - started, closed)


async def closed_within(reader: asyncio.StreamReader, within: float) -> float | None:
    """Seconds until the server closes the connection (reading and dropping what it sends),
    or None if it is still open after `within`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - started


def request(
    method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(port: int, data: bytes, within: float = 10) -> Answer:
    reader, writer = await connect(port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_answer(reader, within)
    finally:
        writer.close()


def rss_kib(pid: int) -> int:
    """The process's resident memory, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
