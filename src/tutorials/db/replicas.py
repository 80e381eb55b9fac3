"""Read replicas: a pool per replica, a poll of where each stands, and the choice of one.

Which replica may serve a read is decided from what is already known, never by asking it on
the read's way (that would be one more round trip per read, as much again as a primary key
lookup: benchmarks/routing.py measures both). Known by a background poll, one task per
server, each on a connection of its own (so a slow or dead server delays nobody else's):

- the primary: `pg_current_wal_insert_lsn()` every `replica_poll_interval_ms`, remembered with
  the moment it was asked (`_Samples`);
- each replica: `pg_is_in_recovery()` and `pg_last_wal_replay_lsn()`, as often.

A replica whose replay position has reached the primary's sample taken at moment t has
everything committed before t: its **lag** is the time since the latest such t. It serves
reads while it is in recovery (a promoted replica is not one any more), answers its polls,
and lags at most `replica_max_lag_ms`; a read that must see a commit at LSN L (read-your-writes,
`tutorials.db.consistency`) also needs its replay position to be at least L. Otherwise the read
goes to the primary. When the primary cannot be sampled (it is down, failing over), the lag of
every replica grows from the last sample, and past the bound they are skipped too: the
staleness bound holds even then.

A read that cannot get a connection from a replica, or loses it, marks the replica down (until
its next good poll) and runs on the primary. A replica that stops being one (promoted) has its
pool's connections replaced, so a URL naming several hosts with
`target_session_attrs=standby` finds the new standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from tutorials.db.consistency import format_lsn, parse_lsn
from tutorials.db.database import ServerPool, close_server
from tutorials.db.engine import connect_options
from tutorials.errors import classify

if TYPE_CHECKING:
    from tutorials.db.database import Database
    from tutorials.db.url import DatabaseUrl
    from tutorials.settings import Settings

__all__ = ["Replica", "ReplicaSet", "ReplicaStatus"]

logger = logging.getLogger("tutorials.db")

PRIMARY_POSITION = "SELECT pg_current_wal_insert_lsn()::text"
REPLICA_POSITION = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as readiness reports it: by its place in the configured list (1, 2, ...),
    never its URL (readiness answers anyone; the logs name the URL, without its password)."""

    replica: int
    state: str  # "streaming", "lagging", "down", "not a replica", "unknown"
    lag_ms: float | None
    replay_lsn: str | None
    error: str | None


class _Samples:
    """The primary's WAL position at moments of the last `keep` seconds, oldest first."""

    def __init__(self, keep: float) -> None:
        self.keep = keep
        self.points: deque[tuple[float, int]] = deque()

    def add(self, at: float, lsn: int) -> None:
        points = self.points
        if points and points[-1][1] == lsn:
            # No new WAL: the newest moment stands for the same position.
            points[-1] = (at, lsn)
        else:
            points.append((at, lsn))
        while len(points) > 1 and points[1][0] < at - self.keep:
            points.popleft()

    def reached(self, replay: int) -> float | None:
        """The latest moment whose primary position `replay` has reached (None: none known)."""
        for at, lsn in reversed(self.points):
            if lsn <= replay:
                return at
        return None

    def latest(self) -> float | None:
        return self.points[-1][0] if self.points else None


class Replica:
    """One replica: its pool (`server`), and what its polls said."""

    def __init__(self, url: DatabaseUrl, settings: Settings) -> None:
        self.url = url
        self.server = ServerPool(
            url, settings.replica_pool_size, settings.stream_connections, settings.pool_timeout
        )
        self.replay: int = -1
        #: The moment of the latest primary sample its replay position had reached.
        self.reached_at: float = -math.inf
        self.healthy = False
        self.in_recovery: bool | None = None
        self.error: str | None = None
        #: Reads (and streams) routed here.
        self.reads = 0

    def failed(self, detail: str) -> None:
        """A read could not use it: skip it until its next good poll."""
        if self.healthy:
            logger.warning("replica %s skipped: %s", self.url.rendered(), detail)
        self.healthy = False
        self.error = detail

    def lag(self, now: float) -> float:
        return now - self.reached_at


class ReplicaSet:
    """The replicas of one `Database`, their pollers, and `choose`."""

    def __init__(self, database: Database, urls: Sequence[DatabaseUrl], settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.replicas = [Replica(url, settings) for url in urls]
        self.max_lag = settings.replica_max_lag_ms / 1000
        self.interval = settings.replica_poll_interval_ms / 1000
        #: A poll that takes longer than this counts as failed (a dead network, a stuck server).
        self.poll_timeout = max(1.0, 5 * self.interval)
        self.samples = _Samples(keep=self.max_lag + 4 * self.interval + self.poll_timeout)
        self.primary_error: str | None = None
        #: Reads that could have gone to a replica and went to the primary (none fit).
        self.primary_reads = 0
        self._turn = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # --- Routing (the hot path: no awaits, no I/O) ----------------------------------------------

    def choose(self, after: int | None) -> Replica | None:
        """A replica for a read that must see `after` (None: any within the lag bound), or None
        for the primary. Among those eligible, one with a free connection slot, in turn."""
        replicas = self.replicas
        count = len(replicas)
        start = next(self._turn)
        now = time.monotonic()
        waiting: Replica | None = None
        for offset in range(count):
            replica = replicas[(start + offset) % count]
            if not replica.healthy or now - replica.reached_at > self.max_lag:
                continue
            if after is not None and replica.replay < after:
                continue
            if not replica.server.slots.locked():
                return replica
            waiting = waiting or replica
        return waiting

    # --- Polling ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the pollers (once, on the running loop). Until their first answers, every read
        goes to the primary."""
        if self._tasks or self._closed:
            return
        self._tasks.append(asyncio.ensure_future(self._poll_primary()))
        for replica in self.replicas:
            self._tasks.append(asyncio.ensure_future(self._poll_replica(replica)))

    async def ready(self, within: float) -> None:
        """Start the pollers and wait (at most `within` seconds) until the primary and each
        replica answered or failed once, so routing starts informed (start-up, tests)."""
        self.start()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            primary = self.samples.latest() is not None or self.primary_error is not None
            replicas = all(
                r.reached_at > -math.inf or r.error is not None or r.in_recovery is False
                for r in self.replicas
            )
            if primary and replicas:
                return
            await asyncio.sleep(min(self.interval / 4, 0.01))

    async def _poll_primary(self) -> None:
        async def sample(connection: asyncpg.Connection[Any]) -> None:
            at = time.monotonic()  # before asking: the answer is at least this recent
            text = await connection.fetchval(PRIMARY_POSITION, timeout=self.poll_timeout)
            lsn = parse_lsn(text)
            self.samples.add(at, lsn)
            self.primary_error = None
            # A replica seen at or past this position has everything committed before `at`.
            for replica in self.replicas:
                if replica.replay >= lsn and at > replica.reached_at:
                    replica.reached_at = at

        def failed(detail: str) -> None:
            self.primary_error = detail

        await self._poll(self.database.url, sample, failed)

    async def _poll_replica(self, replica: Replica) -> None:
        async def sample(connection: asyncpg.Connection[Any]) -> None:
            row = await connection.fetchrow(REPLICA_POSITION, timeout=self.poll_timeout)
            assert row is not None  # one row, always
            in_recovery, replay = bool(row[0]), row[1]
            if replica.in_recovery is True and not in_recovery:
                # Promoted: its pool's connections now lead to a primary. New ones go where
                # the URL says (with `target_session_attrs=standby`, to the new standby).
                logger.warning("replica %s is not in recovery any more", replica.url.rendered())
                if replica.server.pool is not None:
                    await replica.server.pool.expire_connections()
            replica.in_recovery = in_recovery
            if not in_recovery or replay is None:
                replica.healthy = False
                replica.error = "not a replica (not in recovery)"
                return
            replica.replay = parse_lsn(replay)
            reached = self.samples.reached(replica.replay)
            if reached is not None and reached > replica.reached_at:
                replica.reached_at = reached
            if not replica.healthy:
                logger.info("replica %s in use", replica.url.rendered())
            replica.healthy = True
            replica.error = None

        await self._poll(replica.url, sample, replica.failed)

    async def _poll(
        self,
        url: DatabaseUrl,
        sample: Callable[[asyncpg.Connection[Any]], Awaitable[None]],
        failed: Callable[[str], None],
    ) -> None:
        """Run `sample` on a connection of its own every interval until closed; after any
        failure, report it, drop the connection and connect again at the next turn."""
        connection: asyncpg.Connection[Any] | None = None
        options = _poll_options(url, self.settings, self.poll_timeout)
        try:
            while not self._closed:
                started = time.monotonic()
                try:
                    if connection is None or connection.is_closed():
                        connection = await asyncpg.connect(url.dsn, **options)
                    await sample(connection)
                except Exception as exc:
                    failed(_describe(exc))
                    if connection is not None:
                        connection.terminate()
                        connection = None
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            if connection is not None:
                connection.terminate()

    # --- Reporting and closing -------------------------------------------------------------------

    def status(self) -> list[ReplicaStatus]:
        now = time.monotonic()
        found = []
        for number, replica in enumerate(self.replicas, start=1):
            lag = replica.lag(now)
            if replica.in_recovery is False:
                state = "not a replica"
            elif not replica.healthy:
                state = "down" if replica.error else "unknown"
            elif lag > self.max_lag:
                state = "lagging"
            else:
                state = "streaming"
            found.append(
                ReplicaStatus(
                    replica=number,
                    state=state,
                    lag_ms=round(lag * 1000, 1) if math.isfinite(lag) else None,
                    replay_lsn=format_lsn(replica.replay) if replica.replay >= 0 else None,
                    error=replica.error,
                )
            )
        return found

    def pool_stats(self) -> list[tuple[int, int, int]]:
        return [replica.server.stats() for replica in self.replicas]

    async def close(self) -> None:
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for replica in self.replicas:
            await close_server(replica.server)


def _poll_options(url: DatabaseUrl, settings: Settings, timeout: float) -> dict[str, Any]:
    """A poller's connection: the service's options, its own name, and no statement cache."""
    options = connect_options(url, settings)
    options["timeout"] = min(float(options.get("timeout") or timeout), timeout)
    server_settings = dict(options.get("server_settings") or {})
    server_settings["application_name"] = f"{settings.application_name} replica poll"
    options["server_settings"] = server_settings
    options["statement_cache_size"] = 0
    return options


def _describe(error: BaseException) -> str:
    domain = classify(error)
    if domain is not None:
        return domain.detail
    return type(error).__name__
