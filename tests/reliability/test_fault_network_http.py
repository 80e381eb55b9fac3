"""A dead network (loopback packets to the private cluster dropped) seen through the service.

The promise: requests fail with 503 (and Retry-After) within the configured deadline — the
connect timeout for new connections, the statement timeout for work on open ones — not after
the operating system's TCP timeout, the service stays up, and it serves again once the
network returns.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from tests.reliability.harness import Figures, PrivateDb, dropped_packets, ms
from tests.serving import running_service, service_env

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_iptables")]

CONNECT_TIMEOUT = 0.5
STATEMENT_TIMEOUT_MS = 500
#: The longest a failing request may take: a connect, then a statement and its rollback, each
#: within its configured deadline (a client-side deadline may add up to 1 s of margin to the
#: server's statement timeout); plus 1 s of slack for a busy 2-core box.
DEADLINE = CONNECT_TIMEOUT + 2 * (STATEMENT_TIMEOUT_MS / 1000 + 1.0) + 1.0
HANG = DEADLINE + 1.5
REQUESTS = 8


async def test_dead_network_answers_503_within_the_deadline(
    own_db: PrivateDb, tmp_path: Path, figures: Figures
) -> None:
    env = service_env(
        own_db.url_text,
        TUTORIALS_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        TUTORIALS_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS),
        TUTORIALS_POOL_TIMEOUT="1",
    )
    answers: list[tuple[str, float]] = []
    recovery: float | None = None
    async with (
        running_service(env, tmp_path) as service,
        httpx.AsyncClient(base_url=service.base_url, timeout=HANG) as http,
    ):
        warm = await asyncio.gather(*(http.get("/tutorials") for _ in range(4)))
        assert {answer.status_code for answer in warm} == {200}

        async def one(index: int) -> None:
            started = time.monotonic()
            try:
                if index % 2:
                    answer = await http.post("/tutorials", json={"name": f"dead {index}"})
                else:
                    answer = await http.get("/tutorials")
            except httpx.TimeoutException:
                answers.append((f"no answer within {HANG:.0f} s", time.monotonic() - started))
                return
            except httpx.TransportError as exc:
                answers.append((f"transport {type(exc).__name__}", time.monotonic() - started))
                return
            kind = str(answer.status_code)
            if answer.status_code == 503 and not answer.headers.get("retry-after"):
                kind = "503 without Retry-After"
            answers.append((kind, time.monotonic() - started))

        with dropped_packets(own_db.cluster.port):
            await asyncio.gather(*(one(index) for index in range(REQUESTS)))
        back_at = time.monotonic()
        while time.monotonic() - back_at < 20:
            try:
                if (await http.get("/tutorials", timeout=5)).status_code == 200:
                    recovery = time.monotonic() - back_at
                    break
            except httpx.TimeoutException:
                pass
            await asyncio.sleep(0.1)
        alive = service.alive()
    kinds = [kind for kind, _ in answers]
    figures(
        face="http",
        fault="iptables DROP on the database port",
        sent=REQUESTS,
        faults_injected=1,
        unavailable_503=kinds.count("503"),
        other=len(kinds) - kinds.count("503"),
        max_answer_ms=ms(max(seconds for _, seconds in answers)),
        deadline_ms=ms(DEADLINE),
        recovery_ms=ms(recovery),
    )
    assert alive
    assert kinds == ["503"] * REQUESTS, kinds
    assert max(seconds for _, seconds in answers) <= DEADLINE
    assert recovery is not None
