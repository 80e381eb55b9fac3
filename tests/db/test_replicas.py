"""Read replicas, for real: the embedded server and a streaming replica of it, made by the same
path as `tutorials db start --replicas 1`, on loopback.

What must hold: reads (get, list, search, export) go to a replica and writes (and reads inside
them) to the primary; a client that writes and at once reads, through the library or HTTP and
from another process's `Database`, never sees the old row (1,000 rounds each); a replica that

pytestmark = pytest.mark.slow  # over 10 s: scheduled first (tests/conftest.py)
is down, or lags past the bound, is skipped and used again once it is back; without replicas
no write asks for its LSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextvars import Context
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from tests.conftest import copy_embedded_root, embedded_base
from tests.support import run_async

from tutorials import service
from tutorials.api import create_app
from tutorials.db import consistency
from tutorials.db.database import Connection, Database
from tutorials.db.embedded import EmbeddedPostgres, postmaster
from tutorials.db.migrate import upgrade
from tutorials.db.url import DatabaseUrl, parse_database_url
from tutorials.errors import InvalidInput
from tutorials.models import Tutorial
from tutorials.schemas import TutorialPatch
from tutorials.settings import Settings
from tutorials.transfer import export_rows, exporter

ROUNDS = 1_000
IN_RECOVERY = "SELECT pg_is_in_recovery()"


@dataclass
class Cluster:
    server: EmbeddedPostgres
    primary: DatabaseUrl
    replicas: list[DatabaseUrl]
    template: str

    def fresh(self) -> list[DatabaseUrl]:
        """A new database at head (a copy of the template) on the primary, and the same one
        on each replica once it has arrived there: [primary, replica 1, replica 2]."""
        name = f"replica_test_{uuid.uuid4().hex[:12]}"

        async def make() -> None:
            await _execute(self.primary, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            for replica in self.replicas:
                await _arrived(replica.with_database(name))

        run_async(make)
        return [url.with_database(name) for url in (self.primary, *self.replicas)]


async def _execute(url: DatabaseUrl, *statements: str) -> None:
    connection = await asyncpg.connect(url.dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _scalar(url: DatabaseUrl, query: str) -> Any:
    connection = await asyncpg.connect(url.dsn)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


async def _arrived(url: DatabaseUrl, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await _scalar(url, "SELECT 1")
            return
        except asyncpg.InvalidCatalogNameError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def cluster(embedded_template: Path) -> Iterator[Cluster]:
    """The embedded server with two replicas (`start(replicas=2)`, what `tutorials db start
    --replicas 2` runs), and a database at head to copy for each test. Most tests route to
    the first replica alone.

    Durable, unlike other tests' throwaway servers: with `synchronous_commit=off` a commit
    returns before its WAL is flushed, and WAL reaches a replica only once flushed (by the WAL
    writer, every 200 ms), so the replica would lag by that much. On tmpfs fsync costs little.
    """
    base = embedded_base()
    server = EmbeddedPostgres(copy_embedded_root(embedded_template, base / "root"))
    try:
        primary = parse_database_url(server.start(replicas=2))
        replicas = [parse_database_url(url) for url in server.replica_urls()]
        assert len(replicas) == 2
        template = f"replica_template_{uuid.uuid4().hex[:8]}"

        async def migrate() -> None:
            await _execute(primary, f'CREATE DATABASE "{template}"')
            database = Database(primary.with_database(template), _settings())
            try:
                await upgrade(database.engine)
            finally:
                await database.dispose()

        run_async(migrate)
        yield Cluster(server, primary, replicas, template)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"auto_migrate": False, "replica_poll_interval_ms": 5}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@contextlib.asynccontextmanager
async def _routed(
    primary: DatabaseUrl, replica: DatabaseUrl, **overrides: Any
) -> AsyncIterator[Database]:
    database = Database(primary, _settings(**overrides), [replica])
    try:
        assert database.replicas is not None
        await database.replicas.ready(within=10)
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def all_urls(cluster: Cluster) -> list[DatabaseUrl]:
    """This test's database: [on the primary, on replica 1, on replica 2]."""
    return cluster.fresh()


@pytest.fixture
def urls(all_urls: list[DatabaseUrl]) -> tuple[DatabaseUrl, DatabaseUrl]:
    """This test's database on the primary and on the first replica."""
    return all_urls[0], all_urls[1]


@pytest.fixture
async def routed(urls: tuple[DatabaseUrl, DatabaseUrl]) -> AsyncIterator[Database]:
    async with _routed(*urls) as database:
        yield database


async def _on_replica(connection: Connection) -> bool:
    return bool(await connection.fetchval(IN_RECOVERY))


async def _until(condition: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- Routing ---------------------------------------------------------------------------------


async def test_reads_go_to_the_replica_and_writes_to_the_primary(routed: Database) -> None:
    assert await routed.read(_on_replica) is True
    assert await routed.transaction(_on_replica, readonly=True) is True
    assert await routed.stream(_on_replica) is True
    assert await routed.read(_on_replica, primary=True) is False
    assert await routed.write(_on_replica) is False  # and reads inside a write
    assert await routed.transaction(_on_replica) is False


async def test_the_service_reads_on_the_replica(routed: Database) -> None:
    await asyncio.sleep(0.05)  # nothing of this task's own to wait for
    assert routed.replicas is not None
    (replica,) = routed.replicas.replicas
    before = replica.reads
    await service.list_page(routed)
    await service.search(routed, "anything")
    assert await service.find(routed, 1) is None
    assert replica.reads - before == 3
    assert routed.replicas.primary_reads == 0


async def test_a_write_answers_where_it_committed(routed: Database) -> None:
    record = await service.create(routed, service.new_tutorial({"name": "positioned"}))
    assert record.commit_lsn is not None
    assert record.commit_lsn == consistency.last_commit_lsn()
    committed = consistency.parse_lsn(record.commit_lsn)
    assert consistency.required() == committed
    primary_now = consistency.parse_lsn(
        await routed.read(
            lambda c: c.fetchval("SELECT pg_current_wal_insert_lsn()::text"), primary=True
        )
    )
    assert 0 < committed <= primary_now


async def test_without_replicas_a_write_asks_for_nothing_more(
    urls: tuple[DatabaseUrl, DatabaseUrl],
) -> None:
    """No LSN query after a write (the query logger sees the INSERT alone), no position."""
    seen: list[str] = []

    async def insert(connection: Connection) -> None:
        connection.add_query_logger(lambda record: seen.append(record.query))
        await connection.execute("INSERT INTO tutorials (name) VALUES ('plain')")

    for replicas in ([], [urls[1]]):
        seen.clear()
        database = Database(urls[0], _settings(), replicas)
        try:
            await asyncio.create_task(database.write(insert), context=Context())
        finally:
            await database.dispose()
        if not replicas:
            assert seen == ["INSERT INTO tutorials (name) VALUES ('plain')"]
        else:
            assert seen[1:] == ["SELECT pg_current_wal_insert_lsn()::text"]


# --- Read-your-writes --------------------------------------------------------------------------


async def test_read_your_writes_through_the_library_1000_rounds(
    urls: tuple[DatabaseUrl, DatabaseUrl],
) -> None:
    """A writer and a reader with databases of their own (two processes, as far as pools go):
    the reader, given the write's `commit_lsn`, never sees the row as it was before."""
    async with _routed(*urls) as writer, _routed(*urls) as reader:
        stored = await service.create(writer, service.new_tutorial({"name": "round 0"}))
        stale: list[int] = []

        async def read(round_: int, lsn: str | None) -> None:
            with consistency.reading_after(lsn):
                found = await service.get(reader, stored.tutorial_id)
            if found.name != f"round {round_}":
                stale.append(round_)

        for round_ in range(1, ROUNDS + 1):
            changed = await service.update(
                writer, stored.tutorial_id, TutorialPatch(name=f"round {round_}")
            )
            assert changed.commit_lsn is not None
            # In a context of its own: only the LSN it is given tells it what to wait for.
            await asyncio.create_task(read(round_, changed.commit_lsn), context=Context())
            if round_ % 4 == 0:  # and a while later, when the replica has it
                await asyncio.sleep(random.uniform(0, 0.02))
                await asyncio.create_task(read(round_, changed.commit_lsn), context=Context())
        assert reader.replicas is not None
        (replica,) = reader.replicas.replicas
        print(
            f"\nlibrary: {ROUNDS} rounds, reads on the replica {replica.reads}, "
            f"on the primary {reader.replicas.primary_reads}"
        )
    assert stale == []
    assert replica.reads > 0
    assert reader.replicas.primary_reads > 0


async def test_read_your_writes_over_http_1000_rounds(
    urls: tuple[DatabaseUrl, DatabaseUrl],
) -> None:
    """Two apps (two workers) on databases of their own: PATCH on one answers X-Commit-LSN,
    GET on the other with X-Read-After-LSN always shows the change."""
    async with _routed(*urls) as writing, _routed(*urls) as reading:
        settings = _settings()
        writer_app, reader_app = create_app(settings, writing), create_app(settings, reading)
        stale: list[int] = []
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(writer_app), base_url="http://w") as w,
            httpx.AsyncClient(transport=httpx.ASGITransport(reader_app), base_url="http://r") as r,
        ):
            created = await w.post("/tutorials", json={"name": "round 0"})
            assert created.status_code == 201
            location = created.headers["location"]
            lsn = created.headers["x-commit-lsn"]
            for round_ in range(1, ROUNDS + 1):
                patched = await w.patch(
                    location,
                    json={"name": f"round {round_}"},
                    headers={"content-type": "application/merge-patch+json"},
                )
                assert patched.status_code == 200
                assert consistency.parse_lsn(patched.headers["x-commit-lsn"]) > (
                    consistency.parse_lsn(lsn)
                )
                lsn = patched.headers["x-commit-lsn"]
                got = await r.get(location, headers={"x-read-after-lsn": lsn})
                assert got.status_code == 200
                if got.json()["name"] != f"round {round_}":
                    stale.append(round_)
                if round_ % 4 == 0:
                    await asyncio.sleep(random.uniform(0, 0.02))
                    again = await r.get(location, headers={"x-read-after-lsn": lsn})
                    if again.json()["name"] != f"round {round_}":
                        stale.append(round_)
            plain = await r.get(location)  # no header: any replica within the bound
            assert "x-commit-lsn" not in plain.headers  # a read committed nothing
        assert reading.replicas is not None
        (replica,) = reading.replicas.replicas
        print(
            f"\nhttp: {ROUNDS} rounds, reads on the replica {replica.reads}, "
            f"on the primary {reading.replicas.primary_reads}"
        )
    assert stale == []
    assert replica.reads > 0
    assert reading.replicas.primary_reads > 0


async def test_a_task_reads_its_own_writes_without_asking(routed: Database) -> None:
    """Within one task (the library's case) the write's position is remembered by itself."""
    stored = await service.create(routed, service.new_tutorial({"name": "first"}))
    for round_ in range(200):
        await service.update(routed, stored.tutorial_id, TutorialPatch(name=f"n{round_}"))
        assert (await service.get(routed, stored.tutorial_id)).name == f"n{round_}"


async def test_a_task_reads_what_its_orm_sessions_wrote(routed: Database) -> None:
    """`get_session()` units of work note their commit position too."""
    missing = []
    for round_ in range(200):
        async with routed.session() as session:
            added = Tutorial(name=f"orm {round_}")
            session.add(added)
        if await service.find(routed, added.tutorial_id) is None:
            missing.append(round_)
    assert missing == []
    assert consistency.required() is not None


async def test_an_lsn_that_is_not_one_is_invalid_input(routed: Database) -> None:
    with pytest.raises(InvalidInput) as raised, consistency.reading_after("0/zz"):
        pass
    assert [error.loc for error in raised.value.errors] == [("after_lsn",)]
    app = create_app(_settings(), routed)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.get("/tutorials", headers={"x-read-after-lsn": "yesterday"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [
        {"loc": ["header", "X-Read-After-LSN"], "msg": consistency.LSN_RULE}
    ]


# --- Health of the replicas ----------------------------------------------------------------------


async def test_a_replica_past_the_lag_bound_is_skipped_until_it_catches_up(
    urls: tuple[DatabaseUrl, DatabaseUrl],
) -> None:
    primary, replica_url = urls
    async with _routed(primary, replica_url, replica_max_lag_ms=300) as database:
        assert database.replicas is not None
        (replica,) = database.replicas.replicas
        assert await database.read(_on_replica) is True
        await _execute(replica_url, "SELECT pg_wal_replay_pause()")
        try:
            await _execute(primary, "INSERT INTO tutorials (name) VALUES ('while paused')")
            await asyncio.sleep(0.5)  # past the 300 ms bound
            assert database.replicas.status()[0].state == "lagging"
            assert await database.read(_on_replica) is False
        finally:
            await _execute(replica_url, "SELECT pg_wal_replay_resume()")
        await _until(lambda: replica.lag(time.monotonic()) < 0.3)
        assert await database.read(_on_replica) is True


async def test_a_read_whose_replica_went_down_runs_on_the_primary(
    cluster: Cluster, urls: tuple[DatabaseUrl, DatabaseUrl]
) -> None:
    """No poll in between (a minute apart here, so the bound is two): the failing read marks the
    replica down itself and is answered by the primary, and so is every read after it."""
    async with _routed(
        *urls, replica_poll_interval_ms=60_000, replica_max_lag_ms=120_000
    ) as database:
        assert database.replicas is not None
        (replica,) = database.replicas.replicas
        assert await database.read(_on_replica) is True  # a pooled connection to the replica
        info = cluster.server.replicas()[0]  # replica 1: the one routed to
        assert urls[1].sqlalchemy_url().port == info.port
        try:
            await asyncio.to_thread(postmaster.stop, info.layout)
            answers = [await database.read(_on_replica) for _ in range(20)]
            assert replica.healthy is False
            assert database.replicas.status()[0].state == "down"
        finally:
            await asyncio.to_thread(cluster.server.start)  # starts its replicas again
    assert answers == [False] * 20
    assert replica.reads == 2  # the first read, and the one that found it down
    assert database.replicas.primary_reads == 20


async def test_a_replica_that_is_down_is_skipped_and_used_again_when_back(
    cluster: Cluster, urls: tuple[DatabaseUrl, DatabaseUrl]
) -> None:
    async with _routed(*urls) as database:
        assert database.replicas is not None
        (replica,) = database.replicas.replicas
        info = cluster.server.replicas()[0]
        try:
            await asyncio.to_thread(postmaster.stop, info.layout)
            await _until(lambda: not replica.healthy)  # its poll failed
            assert database.replicas.status()[0].state == "down"
            assert await database.read(_on_replica) is False
        finally:
            await asyncio.to_thread(cluster.server.start)
        await _until(lambda: replica.healthy and replica.lag(time.monotonic()) < 0.5)
        assert await database.read(_on_replica) is True
        assert cluster.server.replicas()[0].port == info.port


async def test_readiness_reports_the_replicas(routed: Database) -> None:
    app = create_app(_settings(), routed)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["primary"] == "reachable"
    (replica,) = body["replicas"]
    assert (replica["replica"], replica["state"], replica["error"]) == (1, "streaming", None)
    assert 0 <= replica["lag_ms"] < 1000
    assert consistency.parse_lsn(replica["replay_lsn"]) > 0
    assert "127.0.0.1" not in response.text  # no URL: readiness answers anyone


# --- Exports -------------------------------------------------------------------------------------


async def test_a_parallel_export_runs_on_one_replica_in_one_snapshot(
    all_urls: list[DatabaseUrl], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The parts of a parallel export import the first stream's snapshot, so they must run on
    the same server: with two replicas taken in turn, they follow it to its replica."""
    monkeypatch.setattr(exporter, "PARALLEL_MIN_ROWS", 1)
    primary, *replicas = all_urls
    await _execute(
        primary,
        "INSERT INTO tutorials (name) SELECT 'row ' || n FROM generate_series(1, 400) AS n",
    )
    database = Database(primary, _settings(), replicas)
    try:
        assert database.replicas is not None
        await database.replicas.ready(within=10)
        await database.write(lambda c: c.execute("SELECT 1"))  # a position past the rows
        wanted = consistency.required() or 0
        await _until(lambda: all(r.replay >= wanted for r in database.replicas.replicas))  # type: ignore[union-attr]
        exported = []
        for name, jobs in (("one.ndjson", 1), ("many.ndjson", 2), ("more.ndjson", 3)):
            with (tmp_path / name).open("wb") as out:
                assert await export_rows(database, out, format="ndjson", jobs=jobs) == 400
            exported.append((tmp_path / name).read_bytes())
        reads = [replica.reads for replica in database.replicas.replicas]
        primary_reads = database.replicas.primary_reads
    finally:
        await database.dispose()
    assert exported[0] == exported[1] == exported[2]
    assert sum(reads) == 1 + 2 + 3  # each export's streams, all on replicas
    assert primary_reads == 0
