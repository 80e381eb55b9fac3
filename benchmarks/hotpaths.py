"""Goal 1: the library's hot paths against raw asyncpg doing the same SQL, at concurrency 1 and 32.

Paths (rows of the table), each doing the same six operations:

- `asyncpg` — the baseline: `asyncpg.create_pool(min_size=20, max_size=20)`, plain SQL.
- `asyncpg, no reset` — context: the same pool with a no-op `reset=` (asyncpg's default reset
  on release, `RESET ALL` and friends, is one extra round trip per operation).
- `library` — what users call: `save_tutorial`, `get_tutorial`, `update_tutorial(...,
  expected_version=)`, `delete_tutorial`, `list_tutorials`, `search_tutorials`, with the
  project's engine defaults (stale-connection detection, statement timeouts, validation).
- `library, ORM unit of work` — the same validation, then `Database.run(lambda s:
  repository.x(s, ...))`: the way every face worked before the fast path (and how `get_session`
  users still work).
- context rows, like the issue's anchor table (insert/get/update/delete only): the tutorial's
  pattern (a new sessionmaker per call, ORM load + flush), one `async_sessionmaker`, SQLAlchemy
  Core in `engine.begin()`, and Core on an AUTOCOMMIT connection.

Every path uses a pool of 20 on the same scratch database (10,000 seeded rows), 32 tasks share
it at concurrency 32. Rounds rotate the order of the paths; each cell is the median of rounds.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from benchmarks.core import Context, Exhausted, Sample, Table, drive, median
from benchmarks.seed import pick_queries, seed

NAME = "hotpaths"
SEEDED = 10_000
POOL = 20
PAGE = 20
OPS = ("insert", "get", "update", "delete", "page", "search")
CRUD = OPS[:4]
CONCURRENCY = (1, 32)
UPDATE_ROWS_PER_TASK = 50

COLUMNS = "tutorial_id, name, url, description, tags, created_at, updated_at, version"
SQL = {
    "insert": f"INSERT INTO tutorials (name, url, description, tags) VALUES ($1, $2, $3, $4) "
    f"RETURNING {COLUMNS}",
    "get": f"SELECT {COLUMNS} FROM tutorials WHERE tutorial_id = $1",
    "update": f"UPDATE tutorials SET name = $3, version = version + 1, updated_at = now() "
    f"WHERE tutorial_id = $1 AND version = $2 RETURNING {COLUMNS}",
    "delete": "DELETE FROM tutorials WHERE tutorial_id = $1 RETURNING tutorial_id",
    "page": f"SELECT {COLUMNS} FROM tutorials WHERE tutorial_id > $1 ORDER BY tutorial_id LIMIT $2",
    # The library's search as it runs by default: ranking at most SEARCH_CANDIDATES matches,
    # planned for its words (BEGIN READ ONLY; SET LOCAL plan_cache_mode ...; SELECT; COMMIT).
    "search": f"SELECT {COLUMNS}, ts_rank(search, query) AS rank FROM ("
    "SELECT tutorials.*, query FROM tutorials, websearch_to_tsquery('english', $1) AS query "
    "WHERE search @@ query LIMIT $3) AS tutorials ORDER BY rank DESC, tutorial_id LIMIT $2",
    "search_plan": "BEGIN READ ONLY; SET LOCAL plan_cache_mode = force_custom_plan",
}
SEARCH_CANDIDATES = 2_000  # the library's default (settings.search_candidates)
DESCRIPTION = "A benchmark row: how to measure an async data layer honestly, with baselines."
TAGS = ["python", "postgresql"]


class Path(Protocol):
    name: str
    ops: tuple[str, ...]

    async def start(self, ctx: Context, database: str) -> None: ...
    async def stop(self) -> None: ...
    async def insert(self, name: str, url: str) -> None: ...
    async def get(self, tutorial_id: int) -> None: ...
    async def update(self, tutorial_id: int, version: int, name: str) -> int: ...
    async def delete(self, tutorial_id: int) -> None: ...
    async def page(self, after_id: int) -> None: ...
    async def search(self, query: str) -> None: ...


class RawAsyncpg:
    """The baseline: asyncpg's own pool, plain SQL, nothing else."""

    ops = OPS

    def __init__(self, reset: bool = True) -> None:
        self.name = "asyncpg (baseline)" if reset else "asyncpg, no reset on release"
        self.reset = reset
        self.pool: asyncpg.Pool | None = None

    async def start(self, ctx: Context, database: str) -> None:
        async def no_reset(_connection: asyncpg.Connection) -> None:
            return None

        kwargs: dict[str, Any] = {} if self.reset else {"reset": no_reset}
        self.pool = await asyncpg.create_pool(
            ctx.dsn(database), min_size=POOL, max_size=POOL, **kwargs
        )

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def insert(self, name: str, url: str) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            await connection.fetchrow(SQL["insert"], name, url, DESCRIPTION, TAGS)

    async def get(self, tutorial_id: int) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            await connection.fetchrow(SQL["get"], tutorial_id)

    async def update(self, tutorial_id: int, version: int, name: str) -> int:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(SQL["update"], tutorial_id, version, name)
        if row is None:
            raise RuntimeError("stale")
        return int(row["version"])

    async def delete(self, tutorial_id: int) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            await connection.fetchval(SQL["delete"], tutorial_id)

    async def page(self, after_id: int) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            await connection.fetch(SQL["page"], after_id, PAGE + 1)

    async def search(self, query: str) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            await connection.execute(SQL["search_plan"])
            await connection.fetch(SQL["search"], query, PAGE + 1, SEARCH_CANDIDATES)
            await connection.execute("COMMIT")


def _library_env(ctx: Context, database: str) -> dict[str, str]:
    return {
        "DATABASE_URL": ctx.url(database).render_as_string(hide_password=False),
        "TUTORIALS_POOL_SIZE": str(POOL),
        "TUTORIALS_MAX_OVERFLOW": "0",
        "TUTORIALS_SEARCH_CANDIDATES": str(SEARCH_CANDIDATES),
        "TUTORIALS_AUTO_MIGRATE": "false",
    }


class Library:
    """The public library functions on the default database, as a user calls them."""

    name = "library"
    ops = OPS

    async def start(self, ctx: Context, database: str) -> None:
        from tutorials.db.session import default_database
        from tutorials.settings import get_settings

        os.environ.update(_library_env(ctx, database))
        get_settings.cache_clear()
        await default_database()
        import tutorials

        self.api = tutorials
        self.cursors: dict[int, str] = {}

    async def stop(self) -> None:
        from tutorials.db.session import close_default_database
        from tutorials.settings import get_settings

        await close_default_database()
        get_settings.cache_clear()

    async def insert(self, name: str, url: str) -> None:
        t = self.api.Tutorial(name=name, url=url, description=DESCRIPTION, tags=list(TAGS))
        await self.api.save_tutorial(t)

    async def get(self, tutorial_id: int) -> None:
        await self.api.get_tutorial(tutorial_id)

    async def update(self, tutorial_id: int, version: int, name: str) -> int:
        patch = self.api.TutorialPatch(name=name)
        saved = await self.api.update_tutorial(tutorial_id, patch, expected_version=version)
        return saved.version

    async def delete(self, tutorial_id: int) -> None:
        await self.api.delete_tutorial(tutorial_id)

    async def page(self, after_id: int) -> None:
        await self.api.list_tutorials(limit=PAGE, cursor=_cursor(after_id))

    async def search(self, query: str) -> None:
        await self.api.search_tutorials(query, limit=PAGE)


def _cursor(after_id: int) -> str | None:
    """The cursor a previous page would have handed back (the repository's own encoding)."""
    if after_id == 0:
        return None
    from tutorials.repository import _encode_cursor

    return _encode_cursor("i", [after_id])


class LibraryUnitOfWork:
    """Validation as the library does it, then the ORM unit of work: `Database.run(...)`."""

    name = "library, ORM unit of work"
    ops = OPS

    async def start(self, ctx: Context, database: str) -> None:
        from tutorials.db.session import Database
        from tutorials.settings import Settings

        settings = Settings(_env_file=None, **_settings_kwargs())  # type: ignore[call-arg]
        self.db = Database.from_url(ctx.url(database), settings)

    async def stop(self) -> None:
        await self.db.dispose()

    async def insert(self, name: str, url: str) -> None:
        from tutorials import Tutorial, repository
        from tutorials.library import creation_values

        t = Tutorial(name=name, url=url, description=DESCRIPTION, tags=list(TAGS))
        values = creation_values(t)
        await self.db.run(lambda s: repository.add(s, values))

    async def get(self, tutorial_id: int) -> None:
        from tutorials import repository
        from tutorials.schemas import check_id

        check_id(tutorial_id)
        await self.db.run(lambda s: repository.get(s, tutorial_id))

    async def update(self, tutorial_id: int, version: int, name: str) -> int:
        from tutorials import TutorialPatch, repository
        from tutorials.schemas import check_id

        check_id(tutorial_id)
        changes = TutorialPatch(name=name).changes()
        saved = await self.db.run(
            lambda s: repository.update(s, tutorial_id, changes, expected_version=version)
        )
        return saved.version

    async def delete(self, tutorial_id: int) -> None:
        from tutorials import repository
        from tutorials.schemas import check_id

        check_id(tutorial_id)
        await self.db.run(lambda s: repository.delete(s, tutorial_id))

    async def page(self, after_id: int) -> None:
        from tutorials import repository
        from tutorials.schemas import check_tags

        tags = check_tags(())
        cursor = _cursor(after_id)
        await self.db.run(lambda s: repository.list_page(s, limit=PAGE, cursor=cursor, tags=tags))

    async def search(self, query: str) -> None:
        from tutorials import repository
        from tutorials.schemas import check_query, check_tags

        query, tags = check_query(query), check_tags(())
        await self.db.run(lambda s: repository.search(s, query, limit=PAGE, tags=tags))


class FastGetVariant:
    """Ablations of the fast path, `get` only: what each of its choices is worth.

    - `sqlalchemy-pre-ping`: the same fast path on an engine with SQLAlchemy's own
      `pool_pre_ping=True` (a BEGIN / SELECT 1 / ROLLBACK before every checkout) instead of the
      free stale-connection check.
    - `pool-queue`: callers beyond the pool's size wait inside SQLAlchemy's pool (a greenlet
      hop and a `wait_for` task per waiting checkout) with a yield after each release to keep
      them in turn, instead of on `Database.fast`'s FIFO semaphore (the design before it).
    - `pool-queue, no fair yield`: the same without that yield (fast, but waiters can starve
      into the pool timeout: see the max latency).
    """

    ops = ("get",)

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.name = f"ablation: fast path with {variant}"

    async def start(self, ctx: Context, database: str) -> None:
        from tutorials.db.engine import server_settings
        from tutorials.db.session import Database
        from tutorials.settings import Settings

        settings = Settings(_env_file=None, **_settings_kwargs())  # type: ignore[call-arg]
        if self.variant == "sqlalchemy-pre-ping":
            engine = create_async_engine(
                ctx.url(database),
                pool_size=POOL,
                max_overflow=0,
                pool_timeout=settings.pool_timeout,
                pool_recycle=settings.pool_recycle,
                pool_pre_ping=True,
                pool_use_lifo=True,
                connect_args={
                    "timeout": settings.connect_timeout,
                    "server_settings": server_settings(settings),
                },
            )
            self.db = Database(
                engine, settings.retry_attempts, capacity=POOL, pool_timeout=settings.pool_timeout
            )
            return

        class Unfair(Database):
            def _busy(self) -> bool:
                return False

        kind = Unfair if self.variant == "pool-queue, no fair yield" else Database
        engine = Database.from_url(ctx.url(database), settings).engine
        self.db = kind(engine, settings.retry_attempts, capacity=None)

    async def stop(self) -> None:
        await self.db.dispose()

    async def get(self, tutorial_id: int) -> None:
        from tutorials import repository
        from tutorials.schemas import check_id

        check_id(tutorial_id)
        await self.db.fast(lambda c: repository.get(c, tutorial_id), idempotent=True)

    async def insert(self, name: str, url: str) -> None:  # pragma: no cover - get only
        raise NotImplementedError

    async def update(self, tutorial_id: int, version: int, name: str) -> int:  # pragma: no cover
        raise NotImplementedError

    async def delete(self, tutorial_id: int) -> None:  # pragma: no cover
        raise NotImplementedError

    async def page(self, after_id: int) -> None:  # pragma: no cover
        raise NotImplementedError

    async def search(self, query: str) -> None:  # pragma: no cover
        raise NotImplementedError


def _settings_kwargs() -> dict[str, Any]:
    return {"pool_size": POOL, "max_overflow": 0, "auto_migrate": False}


class OrmSessions:
    """Plain SQLAlchemy ORM, as tutorials show it: load, change, flush, commit."""

    ops = CRUD

    def __init__(self, per_call: bool) -> None:
        self.per_call = per_call
        self.name = (
            "tutorial's pattern (sessionmaker per call, ORM)"
            if per_call
            else "ORM, one async_sessionmaker"
        )

    async def start(self, ctx: Context, database: str) -> None:
        self.engine = create_async_engine(ctx.url(database), pool_size=POOL, max_overflow=0)
        self.maker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def stop(self) -> None:
        await self.engine.dispose()

    def session(self) -> Any:
        if self.per_call:
            return async_sessionmaker(self.engine, expire_on_commit=False)()
        return self.maker()

    async def insert(self, name: str, url: str) -> None:
        from tutorials.models import Tutorial

        async with self.session() as session:
            session.add(Tutorial(name=name, url=url, description=DESCRIPTION, tags=list(TAGS)))
            await session.commit()

    async def get(self, tutorial_id: int) -> None:
        from tutorials.models import Tutorial

        async with self.session() as session:
            await session.get(Tutorial, tutorial_id)

    async def update(self, tutorial_id: int, version: int, name: str) -> int:
        from tutorials.models import Tutorial

        async with self.session() as session:
            found = await session.get(Tutorial, tutorial_id)
            if found is None or found.version != version:
                raise RuntimeError("stale")
            found.name = name
            found.version = version + 1
            found.updated_at = func.now()
            await session.commit()
            return version + 1

    async def delete(self, tutorial_id: int) -> None:
        from tutorials.models import Tutorial

        async with self.session() as session:
            found = await session.get(Tutorial, tutorial_id)
            if found is not None:
                await session.delete(found)
                await session.commit()

    async def page(self, after_id: int) -> None:  # pragma: no cover - not measured (CRUD only)
        raise NotImplementedError

    async def search(self, query: str) -> None:  # pragma: no cover
        raise NotImplementedError


class Core:
    """SQLAlchemy Core statements, in `engine.begin()` or on an AUTOCOMMIT connection."""

    ops = CRUD

    def __init__(self, autocommit: bool) -> None:
        self.autocommit = autocommit
        self.name = (
            "SQLAlchemy Core, AUTOCOMMIT connection"
            if autocommit
            else "SQLAlchemy Core in engine.begin()"
        )

    async def start(self, ctx: Context, database: str) -> None:
        from tutorials.models import Tutorial

        self.engine: AsyncEngine = create_async_engine(
            ctx.url(database), pool_size=POOL, max_overflow=0
        )
        table = Tutorial.__table__
        columns = [c for c in table.c if c.name != "search"]
        self.statements = {
            "insert": insert(table).returning(*columns),
            "get": select(*columns).where(table.c.tutorial_id == _bind("id")),
            "update": update(table)
            .where(table.c.tutorial_id == _bind("id"), table.c.version == _bind("v"))
            .values(name=_bind("n"), version=table.c.version + 1, updated_at=func.now())
            .returning(*columns),
            "delete": delete(table)
            .where(table.c.tutorial_id == _bind("id"))
            .returning(table.c.tutorial_id),
        }
        self.autocommit_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def stop(self) -> None:
        await self.engine.dispose()

    async def _one(self, op: str, params: dict[str, Any]) -> Any:
        if self.autocommit:
            async with self.autocommit_engine.connect() as connection:
                return (await connection.execute(self.statements[op], params)).first()
        async with self.engine.begin() as connection:
            return (await connection.execute(self.statements[op], params)).first()

    async def insert(self, name: str, url: str) -> None:
        await self._one(
            "insert", {"name": name, "url": url, "description": DESCRIPTION, "tags": TAGS}
        )

    async def get(self, tutorial_id: int) -> None:
        await self._one("get", {"id": tutorial_id})

    async def update(self, tutorial_id: int, version: int, name: str) -> int:
        row = await self._one("update", {"id": tutorial_id, "v": version, "n": name})
        if row is None:
            raise RuntimeError("stale")
        return int(row.version)

    async def delete(self, tutorial_id: int) -> None:
        await self._one("delete", {"id": tutorial_id})

    async def page(self, after_id: int) -> None:  # pragma: no cover
        raise NotImplementedError

    async def search(self, query: str) -> None:  # pragma: no cover
        raise NotImplementedError


def _bind(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)


def all_paths() -> list[Path]:
    return [
        RawAsyncpg(),
        Library(),
        LibraryUnitOfWork(),
        RawAsyncpg(reset=False),
        OrmSessions(per_call=True),
        OrmSessions(per_call=False),
        Core(autocommit=False),
        Core(autocommit=True),
        FastGetVariant("sqlalchemy-pre-ping"),
        FastGetVariant("pool-queue"),
        FastGetVariant("pool-queue, no fair yield"),
    ]


@dataclass
class Workload:
    """Inputs shared by every path, so each does the same work on the same rows."""

    dsn: str
    queries: list[str]
    versions: dict[int, int] = field(default_factory=dict)
    doomed: deque[int] = field(default_factory=deque)
    serial: itertools.count[int] = field(default_factory=itertools.count)
    rng: random.Random = field(default_factory=lambda: random.Random(42))

    def update_ids(self, worker: int) -> list[int]:
        base = worker * UPDATE_ROWS_PER_TASK + 1
        return list(range(base, base + UPDATE_ROWS_PER_TASK))

    async def refill_doomed(self, count: int) -> None:
        """Rows for a delete measurement, made by SQL (not by the path being measured)."""
        connection = await asyncpg.connect(self.dsn)
        try:
            rows = await connection.fetch(
                "INSERT INTO tutorials (name) SELECT 'doomed ' || g "
                "FROM generate_series(1, $1::int) AS g RETURNING tutorial_id",
                count,
            )
        finally:
            await connection.close()
        self.doomed = deque(row[0] for row in rows)

    async def drop_leftovers(self) -> None:
        if not self.doomed:
            return
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(
                "DELETE FROM tutorials WHERE tutorial_id = ANY($1::bigint[])", list(self.doomed)
            )
        finally:
            await connection.close()
        self.doomed.clear()


def _operation(
    path: Path, op: str, work: Workload, concurrency: int
) -> Callable[[int], Awaitable[object]]:
    rng = work.rng
    if op == "insert":
        run_id = os.urandom(4).hex()

        async def do_insert(worker: int) -> None:
            n = next(work.serial)
            await path.insert(f"bench {n}", f"https://bench.example/{run_id}/{n}")

        return do_insert
    if op == "get":
        return lambda _worker: path.get(rng.randint(1, SEEDED))
    if op == "update":
        rings = [itertools.cycle(work.update_ids(w)) for w in range(concurrency)]

        async def do_update(worker: int) -> None:
            tutorial_id = next(rings[worker])
            version = work.versions.get(tutorial_id, 1)
            work.versions[tutorial_id] = await path.update(
                tutorial_id, version, f"renamed {version}"
            )

        return do_update
    if op == "delete":

        async def do_delete(_worker: int) -> None:
            if not work.doomed:
                raise Exhausted
            await path.delete(work.doomed.popleft())

        return do_delete
    if op == "page":
        return lambda _worker: path.page(rng.randint(0, SEEDED - PAGE))
    if op == "search":
        return lambda _worker: path.search(rng.choice(work.queries))
    raise ValueError(op)


async def run(ctx: Context) -> list[Table]:
    mode = ctx.mode
    paths = all_paths()
    if ctx.only:  # the baseline always runs: every other figure is a ratio to it
        paths = paths[:1] + [p for p in paths[1:] if any(word in p.name for word in ctx.only)]
    results: dict[tuple[str, str, int], list[Sample]] = {}
    ratios: dict[tuple[str, str, int], list[float]] = {}
    async with ctx.scratch_database("hot") as database:
        dsn = ctx.dsn(database)
        seeded = await seed(dsn, SEEDED, label="hot")
        ctx.log(f"hotpaths: seeded {SEEDED:,} rows in {seeded.seconds:.1f}s")
        queries = [q.text for q in await pick_queries(dsn, SEEDED) if q.matches <= 200]
        work = Workload(dsn, queries)
        rates: dict[tuple[str, int], float] = {}
        baseline, others = paths[0], paths[1:]
        await baseline.start(ctx, database)
        try:
            for round_index in range(max(mode.rounds, mode.context_rounds)):
                # The baseline stays open; one other pool at a time (max_connections is shared).
                # Each measurement of a path is paired with one of the baseline taken just
                # before it, and the ratio is taken within the pair, so drift and other load
                # on the machine fall on both sides alike. The order rotates every round.
                turn = round_index % len(others)
                for path in [*others[turn:], *others[:turn]]:
                    rounds = mode.rounds if path.ops == OPS else mode.context_rounds
                    if round_index >= rounds:
                        continue
                    await path.start(ctx, database)
                    try:
                        for op in path.ops:
                            for c in CONCURRENCY:
                                base = await _measure(baseline, op, c, work, rates, ctx)
                                mine = await _measure(path, op, c, work, rates, ctx)
                                results.setdefault((baseline.name, op, c), []).append(base)
                                results.setdefault((path.name, op, c), []).append(mine)
                                ratios.setdefault((path.name, op, c), []).append(
                                    mine.rate / base.rate if base.rate else 0.0
                                )
                    finally:
                        await path.stop()
                ctx.log(f"hotpaths: round {round_index + 1} done")
        finally:
            await baseline.stop()
    return [*_tables(paths, results, ratios), _mapping_table()]


def _mapping_table() -> Table:
    """What turning one row into a `Tutorial` costs, by the fast path's way and the usual ones."""
    import timeit
    from datetime import UTC, datetime

    from sqlalchemy.orm import configure_mappers, make_transient_to_detached

    from tutorials.models import Tutorial
    from tutorials.repository import _FIELDS, _tutorial

    configure_mappers()
    now = datetime.now(UTC)
    row = (1, "name", "https://a.io", DESCRIPTION, list(TAGS), now, now, 1)

    def constructor() -> Tutorial:
        tutorial = Tutorial(**dict(zip(_FIELDS, row, strict=True)))
        make_transient_to_detached(tutorial)
        return tutorial

    table = Table("Row to Tutorial mapping, µs per row (best of 5)", ["way", "µs"])
    for name, make in (
        ("fast path (`repository._tutorial`)", lambda: _tutorial(row)),
        ("Tutorial(**row) + make_transient_to_detached", constructor),
    ):
        best = min(timeit.repeat(make, number=2000, repeat=5)) / 2000
        table.rows.append({"way": name, "µs": best * 1e6})
    return table


async def _measure(
    path: Path,
    op: str,
    concurrency: int,
    work: Workload,
    rates: dict[tuple[str, int], float],
    ctx: Context,
) -> Sample:
    mode = ctx.mode
    if op == "delete":
        expected = rates.get((path.name, concurrency), 5_000 if concurrency > 1 else 1_500)
        await work.refill_doomed(int(expected * (mode.duration + mode.warmup) * 1.5) + 500)
    sample = await drive(
        _operation(path, op, work, concurrency),
        concurrency=concurrency,
        duration=mode.duration,
        warmup=mode.warmup,
    )
    if op == "delete":
        rates[(path.name, concurrency)] = sample.rate
        await work.drop_leftovers()
    if sample.errors:
        ctx.log(
            f"  {path.name} {op} c={concurrency}: {sample.errors} errors, "
            f"first: {sample.first_error}"
        )
    return sample


def _tables(
    paths: list[Path],
    results: dict[tuple[str, str, int], list[Sample]],
    ratios: dict[tuple[str, str, int], list[float]],
) -> list[Table]:
    baseline = paths[0].name
    tables: list[Table] = []

    def rate(name: str, op: str, c: int) -> float | None:
        samples = results.get((name, op, c))
        return median([s.rate for s in samples]) if samples else None

    for c in CONCURRENCY:
        table = Table(
            f"Hot paths at concurrency {c}: ops/s as a ratio to raw asyncpg "
            "(median of paired rounds)",
            ["path", *OPS],
        )
        for path in paths:
            row: dict[str, Any] = {"path": path.name}
            for op in OPS:
                if path.name == baseline:
                    row[op] = 1.0
                elif (path.name, op, c) in ratios:
                    row[op] = round(median(ratios[(path.name, op, c)]), 2)
            table.rows.append(row)
        table.rows.append(
            {"path": "asyncpg ops/s (absolute)", **{op: rate(baseline, op, c) for op in OPS}}
        )
        table.notes.append(
            f"pool of {POOL}; {SEEDED:,} seeded rows; page = {PAGE} rows by keyset; search = "
            "ranked full-text, queries matching <= 200 rows"
        )
        tables.append(table)

    detail = Table(
        "Hot paths: latency and client CPU per operation (median of rounds)",
        ["path", "op", "c", "ops/s", "p50 ms", "p99 ms", "max ms", "CPU us/op", "errors"],
    )
    detailed = paths[:3] + [p for p in paths[3:] if p.name.startswith("ablation")]
    for path in detailed:
        for op in OPS:
            for c in CONCURRENCY:
                samples = results.get((path.name, op, c))
                if not samples:
                    continue
                detail.rows.append(
                    {
                        "path": path.name,
                        "op": op,
                        "c": c,
                        "ops/s": median([s.rate for s in samples]),
                        "p50 ms": median([s.percentile_ms(50) for s in samples]),
                        "p99 ms": median([s.percentile_ms(99) for s in samples]),
                        "max ms": max(s.percentile_ms(100) for s in samples),
                        "CPU us/op": median([s.cpu_us_per_op for s in samples]),
                        "errors": sum(s.errors for s in samples),
                    }
                )
    tables.append(detail)
    raw = Table("Hot paths: every sample", ["path", "op", "c", "ops/s", "ratios"], printed=False)
    for (name, op, c), samples in sorted(results.items()):
        raw.rows.append(
            {
                "path": name,
                "op": op,
                "c": c,
                "ops/s": [round(s.rate, 1) for s in samples],
                "ratios": [round(r, 3) for r in ratios.get((name, op, c), [])],
            }
        )
    tables.append(raw)
    return tables
