"""Conflicts through the real service: retried serialization failures and deadlocks, optimistic
concurrency under contention, and clean logs while more clients than connections take turns.

One `tutorials serve` for the module (a pool of 16, so 32 clients also queue for connections).
Serialization failures and deadlocks are injected by a trigger that raises the real SQLSTATE on
the server for the next N writes, counting attempts in a sequence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.reliability.harness import (
    Figures,
    PrivateDb,
    fault_attempts,
    install_fault_trigger,
    ms,
    plan_faults,
    scalar,
)
from tests.serving import ServiceProcess, service_env, start_service
from tests.support import client_limits, run_async

ATTEMPTS = 3
POOL_SIZE = 16


@pytest.fixture(scope="module")
def service(
    module_db: PrivateDb, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    run_async(lambda: install_fault_trigger(module_db.dsn))
    env = service_env(
        module_db.url_text,
        TUTORIALS_POOL_SIZE=str(POOL_SIZE),
        # Contention tests count 200s and 412s: a slow box must not turn a wait into a 503.
        TUTORIALS_POOL_TIMEOUT="10",
        TUTORIALS_RETRY_ATTEMPTS=str(ATTEMPTS),
    )
    started = start_service(env, tmp_path_factory.mktemp("conflict-service"))
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_conflicts_are_retried_then_503(
    service: ServiceProcess, module_db: PrivateDb, figures: Figures, sqlstate: str
) -> None:
    dsn = module_db.dsn
    async with httpx.AsyncClient(base_url=service.base_url, timeout=15) as http:
        await plan_faults(dsn, sqlstate, ATTEMPTS - 1)
        started = time.monotonic()
        created = await http.post("/tutorials", json={"name": f"retried {sqlstate}"})
        retried_for = time.monotonic() - started
        attempts_ok = await fault_attempts(dsn)

        await plan_faults(dsn, sqlstate, ATTEMPTS)
        refused = await http.post("/tutorials", json={"name": f"refused {sqlstate}"})
        attempts_refused = await fault_attempts(dsn)

        await plan_faults(dsn, sqlstate, ATTEMPTS)
        tutorial_id = created.json()["tutorial_id"]
        patched = await http.patch(
            f"/tutorials/{tutorial_id}",
            json={"name": "never"},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        await plan_faults(dsn, sqlstate, 0)
        current = (await http.get(f"/tutorials/{tutorial_id}")).json()
    stored_refused = await scalar(
        dsn, "SELECT count(*) FROM tutorials WHERE name = $1", f"refused {sqlstate}"
    )
    figures(
        face="http",
        fault=f"injected SQLSTATE {sqlstate}",
        sent=3,
        faults_injected=3 * ATTEMPTS - 1,
        statuses=[created.status_code, refused.status_code, patched.status_code],
        attempts_when_recovering=attempts_ok,
        attempts_when_giving_up=attempts_refused,
        retried_for_ms=ms(retried_for),
    )
    assert created.status_code == 201 and attempts_ok == ATTEMPTS
    assert refused.status_code == 503 and refused.headers.get("retry-after")
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert attempts_refused == ATTEMPTS
    assert stored_refused == 0
    assert patched.status_code == 503 and patched.headers.get("retry-after")
    assert current["name"] == f"retried {sqlstate}" and current["version"] == 1


async def test_same_if_match_exactly_one_wins(
    service: ServiceProcess, module_db: PrivateDb, figures: Figures
) -> None:
    clients = 32
    limits = client_limits(clients)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=15, limits=limits) as http:
        created = await http.post("/tutorials", json={"name": "contended"})
        assert created.status_code == 201
        etag = created.headers["etag"]
        path = f"/tutorials/{created.json()['tutorial_id']}"
        answers = await asyncio.gather(
            *(
                http.patch(
                    path,
                    json={"description": f"writer {index}"},
                    headers={"If-Match": etag, "Content-Type": "application/merge-patch+json"},
                )
                for index in range(clients)
            )
        )
        final = (await http.get(path)).json()
    statuses = sorted(answer.status_code for answer in answers)
    winner = [answer.json() for answer in answers if answer.status_code == 200]
    figures(
        face="http",
        fault="32 concurrent PATCHes with the same If-Match",
        sent=clients,
        ok=statuses.count(200),
        precondition_failed_412=statuses.count(412),
        final_version=final["version"],
    )
    assert statuses == [200] + [412] * (clients - 1)
    assert final["version"] == 2
    assert final["description"] == winner[0]["description"]


@pytest.mark.slow
async def test_re_reading_the_etag_loses_no_update(
    service: ServiceProcess, module_db: PrivateDb, figures: Figures
) -> None:
    """1,000 PATCHes from 8 clients, each re-reading the ETag: version = successes + 1.

    A client re-reads (GET) after a 412; after a 200 it already holds the new ETag.
    """
    clients, patches = 8, 1000
    remaining = patches
    ok = stale = 0
    other: list[str] = []
    deadline = time.monotonic() + 90
    limits = client_limits(clients)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=15, limits=limits) as http:
        created = await http.post("/tutorials", json={"name": "counter"})
        path = f"/tutorials/{created.json()['tutorial_id']}"

        async def client(index: int) -> None:
            nonlocal remaining, ok, stale
            etag: str | None = None
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                if etag is None:
                    etag = (await http.get(path)).headers["etag"]
                answer = await http.patch(
                    path,
                    json={"description": f"{index}"},
                    headers={"If-Match": etag, "Content-Type": "application/merge-patch+json"},
                )
                etag = answer.headers.get("etag") if answer.status_code == 200 else None
                if answer.status_code == 200:
                    ok += 1
                elif answer.status_code == 412:
                    stale += 1
                else:
                    other.append(f"{answer.status_code}: {answer.text[:120]}")

        started = time.monotonic()
        await asyncio.gather(*(client(index) for index in range(clients)))
        elapsed = time.monotonic() - started
        final = (await http.get(path)).json()
    figures(
        face="http",
        fault="1000 PATCHes re-reading the ETag (8 clients)",
        sent=ok + stale + len(other),
        ok=ok,
        precondition_failed_412=stale,
        other=len(other),
        final_version=final["version"],
        elapsed_ms=ms(elapsed),
    )
    assert other == []
    assert ok + stale == patches
    assert final["version"] == ok + 1
    assert ok > 0 and stale > 0, "no contention: nothing was tested"


async def test_load_past_the_pool_size_logs_no_error(
    service: ServiceProcess, module_db: PrivateDb, figures: Figures
) -> None:
    """Ordinary load past pool_size (no fault at all) must not write a single error line."""
    before = len(service.error_lines())
    clients, per_client = 32, 10
    limits = client_limits(clients)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=15, limits=limits) as http:

        async def client(index: int) -> list[int]:
            statuses = []
            for number in range(per_client):
                answer = await http.post("/tutorials", json={"name": f"load {index}-{number}"})
                statuses.append(answer.status_code)
            return statuses

        results = await asyncio.gather(*(client(index) for index in range(clients)))
    statuses = [status for result in results for status in result]
    errors = service.error_lines()[before:]
    figures(
        face="http",
        fault=f"none: 32 clients on a pool of {POOL_SIZE}",
        sent=len(statuses),
        ok=statuses.count(201),
        error_log_lines=len(errors),
    )
    # No fault, and a pool wait (10 s) far beyond any turn: every request is served.
    assert statuses == [201] * clients * per_client
    assert errors == [], errors[0][:600]
