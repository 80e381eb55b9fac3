"""Item 3 of issue 12: the request head is bounded (size, field count, entity-tag lists).

On the real server over loopback sockets: a head larger than `max_header_bytes` is refused
while it is read, so the server never holds it (it accepted 100 MB heads before, three at once
took 394 MB); more header fields than `max_headers` is a 431 problem; an `If-None-Match` or
`If-Match` list longer than `etags.MAX_ENTITY_TAGS` is a 431 problem, answered after reading
that many tags however long the list (a 10 MB list held the event loop for 3.9 s).
"""

from __future__ import annotations

import asyncio
import time

import httpx
from tests.security.bounds.conftest import Figures, Serve
from tests.security.bounds.wire import LOOPBACK, connect, exchange, read_answer, request, rss_kib

from tutorials.api.etags import MAX_ENTITY_TAGS

HEAD_LIMIT = 16 * 1024  # the default max_header_bytes
HUGE = 100 * 1024 * 1024


async def _send_huge_header(port: int, size: int) -> tuple[int, float, int]:
    """Send a head with one header of `size` bytes in 1 MiB writes, as fast as the server
    takes them; (bytes the server took before it answered or closed, seconds, status)."""
    reader, writer = await connect(port)
    started = time.monotonic()
    sent = 0
    status = 0
    try:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}\r\nX-Big: ".encode())
        chunk = b"a" * (1024 * 1024)
        async with asyncio.timeout(60):
            while sent < size:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                if reader.at_eof() or writer.is_closing():
                    break
            writer.write(b"\r\n\r\n")
            await writer.drain()
    except (ConnectionError, TimeoutError):
        pass
    answer = await read_answer(reader, 10)
    status = answer.status
    writer.close()
    return sent, time.monotonic() - started, status


async def test_a_huge_head_is_refused_while_it_is_read(serve: Serve, figures: Figures) -> None:
    async with serve() as service:
        assert service.process is not None
        pid = service.process.pid
        before = rss_kib(pid)
        results = await asyncio.gather(*(_send_huge_header(service.port, HUGE) for _ in range(3)))
        grown = rss_kib(pid) - before
        async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as client:
            still = (await client.get("/healthz")).status_code
    taken = max(sent for sent, _, _ in results)
    seconds = max(took for _, took, _ in results)
    figures(
        huge_heads=3,
        head_mib=HUGE // (1024 * 1024),
        taken_mib_max=round(taken / 2**20, 1),
        statuses=sorted(status for _, _, status in results),
        seconds_max=round(seconds, 2),
        server_rss_growth_mib=round(grown / 1024, 1),
    )
    # The server stopped reading long before 100 MiB (TCP buffers hold a few MiB on loopback)
    # and its memory did not grow by the heads' size. It answers 400 and closes; the close
    # of a socket with unread data is a reset, which may discard the answer (status 0).
    assert taken < HUGE // 4
    assert grown < 64 * 1024
    assert all(status in (0, 400, 431) for _, _, status in results)
    assert still == 200


async def test_too_many_header_fields_is_a_431_problem(serve: Serve, figures: Figures) -> None:
    async with serve() as service:
        many = {f"X-F{index}": "v" for index in range(150)}
        refused = await exchange(service.port, request("GET", "/healthz", LOOPBACK, many))
        fine = await exchange(
            service.port, request("GET", "/healthz", LOOPBACK, dict(list(many.items())[:50]))
        )
    problem = refused.problem()
    figures(header_fields=150, status=refused.status, answer_bytes=refused.raw_size)
    assert refused.status == 431
    assert problem["status"] == 431
    assert problem["detail"] == "the request has 151 header fields; at most 100"  # + Host
    assert fine.status == 200


async def test_long_entity_tag_lists_are_a_431_problem(serve: Serve, figures: Figures) -> None:
    async with (
        serve() as service,
        httpx.AsyncClient(base_url=service.base_url, timeout=5) as client,
    ):
        created = await client.post("/tutorials", json={"name": "etag"})
        assert created.status_code == 201
        location = created.headers["location"]
        tag = created.headers["etag"]
        # under the head limit, over the tag count: 1,000 tags of 5 bytes
        listed = ", ".join(f'"{n}"' for n in range(2, 1002)) + f", {tag}"
        assert len(listed) < HEAD_LIMIT
        started = time.monotonic()
        none_match = await client.get(location, headers={"If-None-Match": listed})
        if_match = await client.patch(
            location,
            json={"name": "changed"},
            headers={"If-Match": listed, "Content-Type": "application/merge-patch+json"},
        )
        seconds = time.monotonic() - started
        short = await client.get(location, headers={"If-None-Match": f'"999", {tag}'})
        unchanged = (await client.get(location)).json()["name"]
    figures(
        tags_listed=1001,
        if_none_match=none_match.status_code,
        if_match=if_match.status_code,
        seconds_both=round(seconds, 3),
    )
    assert none_match.status_code == 431
    assert none_match.headers["content-type"].startswith("application/problem+json")
    assert none_match.json()["detail"] == (
        f"the If-None-Match header lists more than {MAX_ENTITY_TAGS} entity tags: "
        "send the one you were given"
    )
    assert if_match.status_code == 431
    assert unchanged == "etag"
    assert short.status_code == 304
