"""Failover decided by Patroni (with etcd), under 32 writers, seen through `tutorials serve`.

Two Patroni clusters of two PostgreSQL 15 nodes each (one with asynchronous replication, one
with Patroni's synchronous mode), started together. The service reaches the primary through
a URL naming both nodes with `target_session_attrs=read-write`: a new connection tries each
host and keeps the one that accepts writes, so once the replica is promoted, new connections
find it, with no configuration change and no script of ours deciding anything.

Per mode: 32 HTTP clients POST new tutorials; after 1.5 s the replica stops receiving the
leader's WAL (its packets are dropped: a replica falling behind, as it does across a slow
link), and a second later the leader's machine "dies" (its Patroni and its postmaster get
SIGKILL); Patroni promotes the replica when the leader's key expires (`ttl`, 10 s). Measured:
the error window (first to last failed request), the time from the kill to the first 2xx
after it, when Patroni reported the promotion, and how many acknowledged writes the new
primary does not have: with asynchronous replication, those of the last second; with
synchronous, none, since no commit was acknowledged before the replica had it (the writers
wait instead).

The promises: in the window clients get only 503 with Retry-After (never a 500, never a reset
connection), the service process lives through it, 2xx come back after the promotion, and with
synchronous replication not one acknowledged write is lost. Slow (about 40 s for both) and
bounded: every wait has a deadline; loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from tests.clusters import quiet_settings
from tests.reliability.harness import Figures, Outcomes, http_write_load, iptables_available, ms
from tests.reliability.patroni import (
    Etcd,
    PatroniCluster,
    PatroniNode,
    new_base,
    own,
    patroni_unavailable,
    remove_stale_cuts,
    replication_cut,
)
from tests.serving import running_service, service_env

from tutorials.db.database import Database
from tutorials.db.migrate import upgrade

CLIENTS = 32
LOAD_BEFORE = 1.5
#: How long the replica receives nothing before the leader dies.
CUT_BEFORE_KILL = 1.0
LOAD_AFTER = 1.5
DEADLINE = 60.0
#: From the kill to the first 2xx: the leader key's ttl (10 s), Patroni's loop, a connect.
RECOVERY_LIMIT = 30.0
DATABASE = "tutorials"


@dataclass
class Clusters:
    asynchronous: PatroniCluster
    synchronous: PatroniCluster


@pytest.fixture(scope="module")
def clusters() -> Iterator[Clusters]:
    reason = patroni_unavailable() or iptables_available()
    if reason is not None:
        pytest.skip(reason)
    remove_stale_cuts()
    base = new_base()
    etcd = Etcd(base)
    started: list[PatroniCluster] = []
    try:
        etcd.start()
        for synchronous in (False, True):
            mode_dir = base / ("sync" if synchronous else "async")
            mode_dir.mkdir()
            own(mode_dir)
            started.append(PatroniCluster.start(etcd, mode_dir, synchronous=synchronous))
        # Both bootstrap at once; wait for each in turn.
        leaders = [cluster.wait_ready() for cluster in started]
        for cluster, leader in zip(started, leaders, strict=True):
            _prepare(cluster, leader)
        yield Clusters(*started)
    finally:
        for cluster in started:
            cluster.stop()
        etcd.stop()
        shutil.rmtree(base, ignore_errors=True)


def _prepare(cluster: PatroniCluster, leader: PatroniNode) -> None:
    """The service's database, at the migrations' head, created on the leader."""

    async def make() -> None:
        connection = await asyncpg.connect(cluster.node_dsn(leader, "postgres"), timeout=10)
        try:
            await connection.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await connection.close()
        database = Database.from_url(cluster.node_dsn(leader, DATABASE), quiet_settings())
        try:
            await upgrade(database.engine)
        finally:
            await database.dispose()

    result: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(make())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if result:
        raise result[0]


async def _receiver_port(cluster: PatroniCluster, leader: PatroniNode) -> int:
    """The replica's WAL receiver's port, as the leader's walsender sees it once streaming.

    Patroni reports a replica as running before its WAL receiver has connected (and after a
    restart of the receiver, for a moment, not at all): wait for the walsender, up to 30 s."""
    connection = await asyncpg.connect(cluster.node_dsn(leader, "postgres"), timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            port = await connection.fetchval(
                "SELECT client_port FROM pg_stat_replication WHERE state = 'streaming'"
            )
            if isinstance(port, int) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    assert isinstance(port, int), "the replica did not stream from the leader within 30 s"
    return port


async def _found(cluster: PatroniCluster, node: PatroniNode, names: list[str]) -> int:
    connection = await asyncpg.connect(cluster.node_dsn(node, DATABASE), timeout=10)
    try:
        value = await connection.fetchval(
            "SELECT count(*) FROM tutorials WHERE name = ANY($1::text[])", names
        )
    finally:
        await connection.close()
    return int(value)


async def _fail_over(
    cluster: PatroniCluster, mode: str, tmp_path: Path, figures: Figures
) -> tuple[Outcomes, int]:
    leader = next(node for node in cluster.nodes if node.is_leader())
    other = next(node for node in cluster.nodes if node is not leader)
    env = service_env(cluster.url(DATABASE), TUTORIALS_CONNECT_TIMEOUT="2")
    await asyncio.to_thread(tmp_path.chmod, 0o755)
    outcomes = Outcomes()
    stop = asyncio.Event()
    deadline = time.monotonic() + DEADLINE
    promoted_at: float | None = None
    async with running_service(env, tmp_path) as service:
        load = asyncio.create_task(
            http_write_load(
                service.base_url, outcomes, stop, clients=CLIENTS, per_client=100_000,
                deadline=deadline, prefix=f"failover-{mode}",
            )
        )  # fmt: skip
        try:
            await asyncio.sleep(LOAD_BEFORE)
            receiver = await _receiver_port(cluster, leader)
            # When the replica leaves recovery, as PostgreSQL itself says it: Patroni's REST
            # API answered up to 10 s late on a loaded machine, which made writes on the new
            # primary look earlier than its promotion.
            watcher = await asyncpg.connect(cluster.node_dsn(other, "postgres"), timeout=10)
            with replication_cut(leader.pg_port, receiver):
                await asyncio.sleep(CUT_BEFORE_KILL)
                killed_at = time.monotonic()
                await asyncio.to_thread(leader.kill)
            try:
                while time.monotonic() < deadline:
                    if promoted_at is None and not await watcher.fetchval(
                        "SELECT pg_is_in_recovery()"
                    ):
                        promoted_at = time.monotonic()
                    failures = [t for t in outcomes.failure_times if t >= killed_at]
                    recovered = failures and outcomes.first_success_after(failures[0])
                    if promoted_at is not None and recovered:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await watcher.close()
            named = False  # Patroni, asked in its own time, names the new leader too
            while not named and time.monotonic() < deadline:
                named = await asyncio.to_thread(other.is_leader)
                await asyncio.sleep(0 if named else 0.1)
            assert named, "Patroni never named the promoted replica its leader"
            await asyncio.sleep(LOAD_AFTER)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await load
        alive = service.alive()
        errors = service.error_lines()
    failures = [t for t in outcomes.failure_times if t >= killed_at]
    # The first write acknowledged by the new primary. Backends of the killed postmaster can
    # still commit a write in flight for a moment (they notice the postmaster's death at their
    # next check), and such a late success is not the recovery; the watcher polls every 50 ms,
    # hence the margin.
    first_ok = outcomes.first_success_after(promoted_at - 1.0) if promoted_at else None
    orphaned = sum(
        killed_at <= t < (promoted_at or killed_at) - 1.0 for t in outcomes.success_times
    )
    acknowledged = sorted(outcomes.acknowledged)
    found = await _found(cluster, other, acknowledged)
    lost = len(acknowledged) - found
    figures(
        face="http",
        fault=f"kill -9 of the Patroni leader (patroni + postmaster), {mode} replication",
        clients=CLIENTS,
        sent=outcomes.sent,
        acknowledged=outcomes.ok,
        unavailable_503=outcomes.unavailable,
        bad=len(outcomes.bad),
        error_window_ms=ms(failures[-1] - failures[0] if failures else None),
        first_2xx_after_kill_ms=ms(first_ok - killed_at if first_ok else None),
        promoted_after_ms=ms(promoted_at - killed_at if promoted_at else None),
        acknowledged_lost=lost,
        acknowledged_by_the_dying_primary=orphaned,
        error_log_lines=len(errors),
    )
    assert alive, "the service died"
    assert outcomes.bad == [], outcomes.bad[:5]
    assert outcomes.unavailable > 0, "no client saw the failover: nothing was tested"
    assert promoted_at is not None, "Patroni never promoted the replica"
    assert first_ok is not None and first_ok - killed_at <= RECOVERY_LIMIT
    return outcomes, lost


@pytest.mark.slow
async def test_failover_with_asynchronous_replication(
    clusters: Clusters, tmp_path: Path, figures: Figures
) -> None:
    """Asynchronous: what the replica had not received when the leader died is gone, though
    acknowledged: the writes of the last second."""
    outcomes, lost = await _fail_over(clusters.asynchronous, "asynchronous", tmp_path, figures)
    assert 0 < lost <= outcomes.ok


@pytest.mark.slow
async def test_failover_with_synchronous_replication_loses_no_acknowledged_write(
    clusters: Clusters, tmp_path: Path, figures: Figures
) -> None:
    _, lost = await _fail_over(clusters.synchronous, "synchronous", tmp_path, figures)
    assert lost == 0
