"""Zero-downtime upgrade drill: the running service keeps answering while the new revisions run.

The service (`tutorials serve` in a subprocess, auto-migration off, as in a rolling deploy
where the schema moves first) runs against a database stopped before head, with rows in it,
under 32 HTTP clients writing and a reader searching; `tutorials db upgrade` then runs to
head in another process. The promises, audited as the restart tests audit them: every write
answered 2xx is in the table afterwards; no answer but 2xx (and 503 with Retry-After, counted
and reported; none is expected); the service never dies; every row, old or written during
the upgrade, holds its search document; and writes never stop for a second (the longest
stretch of the upgrade without an acknowledged write is under `MAX_GAP`).

Starting points: a database that ran revision 0002 as first written (`tests/db/first_0002.sql`,
what databases deployed before issue 18 are at) and the revision before head (whatever the
newest revision is, this drill runs it under load).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from tests.clusters import PrivateCluster, quiet_settings
from tests.reliability.harness import (
    Figures,
    Outcomes,
    classify_answer,
    http_write_load,
    ms,
    scalar,
)
from tests.serving import running_service, service_env
from tests.support import run_async

from tutorials.db.migrate import alembic_config, head_revision, upgrade
from tutorials.db.session import Database
from tutorials.models import SEARCH_DOCUMENT

CLI = [sys.executable, "-c", "from tutorials.cli import main; main()"]
FIRST_0002 = Path(__file__).resolve().parents[1] / "db" / "first_0002.sql"
CLIENTS = 32
ROWS = 20_000
LOAD_BEFORE = 1.0
LOAD_AFTER = 1.0
HARD_DEADLINE = 120.0
MAX_GAP = 1.0


def _previous_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config()).get_revision("head")
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


def _prepare(cluster: PrivateCluster, start: str) -> str:
    """A database at `start` with `ROWS` catalog rows; its name."""
    name = cluster.create_database(migrate=False)

    async def make() -> None:
        database = Database.from_url(cluster.url(name), quiet_settings())
        try:
            await upgrade(database.engine, "0001" if start == "first 0002" else start)
        finally:
            await database.dispose()
        connection = await asyncpg.connect(cluster.dsn(name))
        try:
            if start == "first 0002":
                await connection.execute(FIRST_0002.read_text(encoding="utf-8"))
            await connection.execute(
                "INSERT INTO tutorials (name, url, description, tags) "
                "SELECT 'Seeded tutorial ' || i, 'https://example.com/seeded/' || i, "
                "'About async python, number ' || i, ARRAY['tag' || (i % 7)] "
                f"FROM generate_series(1, {ROWS}) AS i"
            )
        finally:
            await connection.close()

    run_async(make)
    return name


async def _search_load(
    base_url: str, outcomes: Outcomes, stop: asyncio.Event, deadline: float
) -> None:
    """One reader searching all along (the search column is what the revisions change)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as http:
        while not stop.is_set() and time.monotonic() < deadline:
            outcomes.sent += 1
            try:
                response = await http.get("/tutorials", params={"q": "async python", "limit": 5})
            except httpx.TransportError as exc:
                outcomes.bad_answer(f"transport: {type(exc).__name__}")
                continue
            classify_answer(outcomes, response, None)
            if response.status_code == 200 and not response.json()["items"]:
                outcomes.bad_answer("a search found nothing")
            await asyncio.sleep(0.02)


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] with no successful answer."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))


@pytest.mark.slow
@pytest.mark.parametrize("start", ["first 0002", "previous revision"])
async def test_the_service_keeps_answering_while_the_new_revisions_run(
    cluster: PrivateCluster, tmp_path: Path, figures: Figures, start: str
) -> None:
    revision = "first 0002" if start == "first 0002" else _previous_revision()
    name = _prepare(cluster, revision)
    dsn = cluster.dsn(name)
    env = service_env(cluster.url(name).render_as_string(hide_password=False))
    writes, reads = Outcomes(), Outcomes()
    stop = asyncio.Event()
    deadline = time.monotonic() + HARD_DEADLINE
    async with running_service(env, tmp_path) as service:
        errors_before = len(service.error_lines())
        load = asyncio.create_task(
            http_write_load(
                service.base_url, writes, stop, clients=CLIENTS, per_client=100_000,
                deadline=deadline, prefix="drill",
            )
        )  # fmt: skip
        searching = asyncio.create_task(_search_load(service.base_url, reads, stop, deadline))
        try:
            await asyncio.sleep(LOAD_BEFORE)
            began = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *CLI, "db", "upgrade", env=env, cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(process.communicate(), HARD_DEADLINE)
            ended = time.monotonic()
            await asyncio.sleep(LOAD_AFTER)
        finally:
            stop.set()
            await asyncio.gather(load, searching)
        alive = service.alive()
        error_lines = service.error_lines()[errors_before:]

    found = await scalar(
        dsn,
        "SELECT count(*) FROM tutorials WHERE name = ANY($1::text[])",
        sorted(writes.acknowledged),
    )
    version = await scalar(dsn, "SELECT version_num FROM alembic_version")
    wrong_documents = await scalar(
        dsn, f"SELECT count(*) FROM tutorials WHERE search IS DISTINCT FROM ({SEARCH_DOCUMENT})"
    )
    during = sum(began <= t <= ended for t in writes.success_times)
    gap = _longest_gap(writes.success_times, began, ended)
    figures(
        face="http",
        fault=f"tutorials db upgrade from {start} ({revision}) under load",
        clients=CLIENTS,
        rows=ROWS,
        upgrade_ms=ms(ended - began),
        sent=writes.sent + reads.sent,
        acknowledged=writes.ok,
        writes_during_upgrade=during,
        unavailable_503=writes.unavailable + reads.unavailable,
        bad=len(writes.bad) + len(reads.bad),
        rows_found=f"{found}/{len(writes.acknowledged)}",
        longest_gap_between_writes_ms=ms(gap),
        error_log_lines=len(error_lines),
    )
    assert process.returncode == 0, err.decode(errors="replace")[-1500:]
    assert version == head_revision()
    assert alive, "the service died during the upgrade"
    assert writes.bad == [] and reads.bad == [], (writes.bad + reads.bad)[:5]
    assert found == len(writes.acknowledged) == writes.ok
    assert during > 0 or ended - began < 0.5, "no write was acknowledged during the upgrade"
    # "Keeps answering": with 32 writers, a second without a single 2xx means the table stopped.
    assert gap < MAX_GAP, f"no write was acknowledged for {gap:.2f} s during the upgrade"
    assert reads.ok > 0
    assert wrong_documents == 0
    assert error_lines == []
