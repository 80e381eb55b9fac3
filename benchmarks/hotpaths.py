"""Goal 1 (issue 11): the library's hot paths against tuned raw asyncpg doing the same SQL.

Paths (rows of the tables), each doing the same six operations at concurrency 1 and 32:

- `asyncpg (tuned baseline)` — `asyncpg.create_pool(min_size=20, max_size=20, reset=<no-op>)`
  (asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
  RESET ALL` on every release: one more round trip), the very statements the library sends
  (taken from `tutorials.repository`), rows left as asyncpg `Record`s. The search is the
  library's: bounded, custom-planned (`SET LOCAL plan_cache_mode`), in a read-only
  transaction, here in three round trips (`BEGIN READ ONLY; SET LOCAL ...` as one simple
  query, the SELECT, `COMMIT`).
- `library` — what users call: `save_tutorial(Tutorial(...))`, `get_tutorial`,
  `update_tutorial(..., expected_version=)`, `delete_tutorial`, `list_tutorials(cursor=)`,
  `search_tutorials`, on the default database (`Database` on asyncpg's pool of 20) with the
  project's defaults: validation, FIFO admission, retries, ping after idle, statement timeouts.
- `get_session() unit of work` — the same validation and the same repository functions, run
  inside an ORM session (`Database.run`, SQL through `exec_driver_sql`): the tutorial's
  `get_session()` path, on a SQLAlchemy pool of 20.
- ablations (context): the library without its client-side deadlines (statement timeouts
  off: no unit of work watched) and without the ping after idle (its bookkeeping per unit of
  work): what those guarantees cost.
- context rows: asyncpg with its default reset (the untuned baseline of older records), the
  search in `connection.transaction()` (four round trips, as `Database.transaction` runs it),
  and like the issue's anchor table (insert/get/update/delete only) the tutorial's ORM pattern
  (a new sessionmaker per call, load + flush), one `async_sessionmaker`, SQLAlchemy Core in
  `engine.begin()`, and Core on an AUTOCOMMIT connection.

Every path uses a pool of 20 on the same scratch database (10,000 seeded rows); 32 tasks share
it at concurrency 32. Each measurement of a path is paired with one of the baseline, the two
taken in turns (slices of a fraction of a second, `Mode.chunks` each); the ratio (ops/s, and
CPU µs per op) is taken within the pair, and each cell is the median over rounds, whose order
rotates.
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

from benchmarks.core import Context, Exhausted, Sample, Table, drive, median, merged
from benchmarks.seed import pick_queries, seed
from tutorials import repository

NAME = "hotpaths"
SEEDED = 10_000
POOL = 20
PAGE = 20
OPS = ("insert", "get", "update", "delete", "page", "search")
CRUD = OPS[:4]
CONCURRENCY = (1, 32)
UPDATE_ROWS_PER_TASK = 50
SEARCH_CANDIDATES = 2_000  # the library's default (settings.search_candidates)

#: The statements the library sends, from the repository itself. The library fetches one row
#: more than a page holds (to know whether another follows): so does the baseline.
SQL = {
    "insert": repository.INSERT,  # $1 name, $2 url, $3 description, $4 tags
    "get": repository.GET,  # $1 id
    "update": repository.update_statement(("name",), True),  # $1 id, $2 name, $3 version
    "delete": repository.DELETE,  # $1 id
    "page": repository.PAGE,  # $1 after id, $2 limit
    "search": repository.search_statement(False, False, True),  # $1 q, $2 limit, $3 bound
}
#: The search's transaction opening in one round trip (a simple query of two statements).
SEARCH_BEGIN = f"BEGIN READ ONLY; {repository.CUSTOM_PLAN}"
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


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """The tuned pool's `reset=`: nothing to undo (the statements leave no session state)."""
    return None


class RawAsyncpg:
    """The baseline: asyncpg's own pool, the library's SQL, asyncpg Records, nothing else.

    `reset=False` (the default) is the tuned pool (a no-op `reset=`); `reset=True` keeps
    asyncpg's default reset, the untuned baseline of older records (context only).
    `search_in_transaction` runs the search in `connection.transaction(readonly=True)`, as
    `Database.transaction` does (one more round trip: BEGIN and SET LOCAL apart).
    """

    def __init__(
        self, *, reset: bool = False, search_in_transaction: bool = False, name: str = ""
    ) -> None:
        self.reset = reset
        self.search_in_transaction = search_in_transaction
        self.name = name or "asyncpg (tuned baseline)"
        self.ops = ("search",) if search_in_transaction else OPS
        self.pool: asyncpg.Pool | None = None

    async def start(self, ctx: Context, database: str) -> None:
        await self.open(ctx.dsn(database))

    async def open(self, dsn: str) -> None:
        options: dict[str, Any] = {} if self.reset else {"reset": _no_reset}
        self.pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL, **options)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def insert(self, name: str, url: str) -> asyncpg.Record:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            return await connection.fetchrow(SQL["insert"], name, url, DESCRIPTION, TAGS)

    async def get(self, tutorial_id: int) -> asyncpg.Record | None:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            return await connection.fetchrow(SQL["get"], tutorial_id)

    async def update(self, tutorial_id: int, version: int, name: str) -> int:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(SQL["update"], tutorial_id, name, version)
        if row is None:
            raise RuntimeError("stale")
        return int(row["version"])

    async def delete(self, tutorial_id: int) -> bool:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            return await connection.fetchval(SQL["delete"], tutorial_id) is not None

    async def page(self, after_id: int, tags: list[str] | None = None) -> list[asyncpg.Record]:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            if tags:
                return await connection.fetch(repository.PAGE_TAGGED, after_id, PAGE + 1, tags)
            return await connection.fetch(SQL["page"], after_id, PAGE + 1)

    async def search(self, query: str) -> list[asyncpg.Record]:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            if self.search_in_transaction:
                async with connection.transaction(readonly=True):
                    await connection.execute(repository.CUSTOM_PLAN)
                    return await connection.fetch(SQL["search"], query, PAGE + 1, SEARCH_CANDIDATES)
            await connection.execute(SEARCH_BEGIN)
            try:
                rows = await connection.fetch(SQL["search"], query, PAGE + 1, SEARCH_CANDIDATES)
            except BaseException:
                await connection.execute("ROLLBACK")
                raise
            await connection.execute("COMMIT")
            return rows


def _library_env(ctx: Context, database: str) -> dict[str, str]:
    return {
        "DATABASE_URL": ctx.url(database).render_as_string(hide_password=False),
        "TUTORIALS_POOL_SIZE": str(POOL),
        "TUTORIALS_SEARCH_CANDIDATES": str(SEARCH_CANDIDATES),
        "TUTORIALS_AUTO_MIGRATE": "false",
    }


def page_cursor(after_id: int) -> str | None:
    """The cursor `list_tutorials` hands back with a page ending at `after_id` (None: the first
    page), by the service's own encoding (its private helpers: a benchmark needs a cursor for
    any id, not only for those a walk through the pages would meet)."""
    if after_id == 0:
        return None
    from tutorials.service import _fingerprint, _id_cursor_after

    return _id_cursor_after(_fingerprint("i", None, []), after_id)


class Library:
    """The public library functions on the default database, as a user calls them.

    `without` names settings turned off for an ablation row (context: what a guarantee costs).
    """

    ops = OPS

    def __init__(self, name: str = "library", without: dict[str, str] | None = None) -> None:
        self.name = name
        self.without = without or {}

    async def start(self, ctx: Context, database: str) -> None:
        from tutorials.db.session import default_database
        from tutorials.settings import get_settings

        env = {**_library_env(ctx, database), **self.without}
        self.saved_env = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        get_settings.cache_clear()
        await default_database()
        import tutorials

        self.api = tutorials
        # Made up front, so that no measured call pays for making one.
        self.cursors = [page_cursor(after_id) for after_id in range(SEEDED + 1)]

    async def stop(self) -> None:
        from tutorials.db.session import close_default_database
        from tutorials.settings import get_settings

        await close_default_database()
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
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
        cursor = self.cursors[after_id] if after_id <= SEEDED else page_cursor(after_id)
        await self.api.list_tutorials(limit=PAGE, cursor=cursor)

    async def search(self, query: str) -> None:
        await self.api.search_tutorials(query, limit=PAGE)


class SessionUnitOfWork:
    """The library's validation, then the repository's functions in an ORM unit of work
    (`Database.run`: an `AsyncSession`, the same SQL through `exec_driver_sql`): the path of
    `get_session()` users."""

    name = "get_session() unit of work"
    ops = OPS

    async def start(self, ctx: Context, database: str) -> None:
        from tutorials.db.database import Database
        from tutorials.settings import Settings

        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            pool_size=POOL,
            session_pool_size=POOL,
            auto_migrate=False,
            search_candidates=SEARCH_CANDIDATES,
        )
        self.db = Database.from_url(ctx.url(database), settings)

    async def stop(self) -> None:
        await self.db.dispose()

    async def insert(self, name: str, url: str) -> None:
        from tutorials import service
        from tutorials.models import Tutorial

        t = Tutorial(name=name, url=url, description=DESCRIPTION, tags=list(TAGS))
        data = service.new_tutorial(
            {"name": t.name, "url": t.url, "description": t.description, "tags": t.tags}
        )
        await self.db.run(
            lambda s: repository.insert(s, data.name, data.url, data.description, data.tags)
        )

    async def get(self, tutorial_id: int) -> None:
        from tutorials.schemas import check_id

        check_id(tutorial_id)
        await self.db.run(lambda s: repository.get(s, tutorial_id))

    async def update(self, tutorial_id: int, version: int, name: str) -> int:
        from tutorials.schemas import TutorialPatch, check_id, check_version

        check_id(tutorial_id)
        check_version(version)
        changes = TutorialPatch(name=name).changes()
        saved = await self.db.run(
            lambda s: repository.update(s, tutorial_id, changes, expected_version=version)
        )
        if saved is None:
            raise RuntimeError("stale")
        return saved.version

    async def delete(self, tutorial_id: int) -> None:
        from tutorials.schemas import check_id

        check_id(tutorial_id)
        await self.db.run(lambda s: repository.delete(s, tutorial_id))

    async def page(self, after_id: int) -> None:
        from tutorials.schemas import check_limit, check_tags

        limit, _tags = check_limit(PAGE), check_tags(())
        await self.db.run(lambda s: repository.page(s, after_id=after_id, limit=limit + 1))

    async def search(self, query: str) -> None:
        from tutorials.schemas import check_limit, check_query, check_tags

        query, limit, _tags = check_query(query), check_limit(PAGE), check_tags(())
        await self.db.run(
            lambda s: repository.search(s, query, limit=limit + 1, candidates=SEARCH_CANDIDATES)
        )


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
    """The baseline first (every other figure is a ratio to it), then the goal's path."""
    return [
        RawAsyncpg(),
        Library(),
        SessionUnitOfWork(),
        Library(
            "ablation: library without client-side deadlines",
            {"TUTORIALS_STATEMENT_TIMEOUT_MS": "0"},
        ),
        Library(
            "ablation: library without the ping after idle", {"TUTORIALS_POOL_PRE_PING": "false"}
        ),
        RawAsyncpg(reset=True, name="asyncpg, default reset (untuned)"),
        RawAsyncpg(search_in_transaction=True, name="asyncpg, search in connection.transaction()"),
        OrmSessions(per_call=True),
        OrmSessions(per_call=False),
        Core(autocommit=False),
        Core(autocommit=True),
    ]


#: Paths whose rows count towards the goal (measured every round); the rest are context.
GOAL_PATHS = ("library", "get_session() unit of work")


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


Key = tuple[str, str, int]


async def run(ctx: Context) -> list[Table]:
    mode = ctx.mode
    paths = all_paths()
    if ctx.only:  # the baseline always runs: every other figure is a ratio to it
        paths = paths[:1] + [p for p in paths[1:] if any(word in p.name for word in ctx.only)]
    results: dict[Key, list[Sample]] = {}
    ratios: dict[Key, list[float]] = {}
    cpu_ratios: dict[Key, list[float]] = {}
    load_before = os.getloadavg()
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
                # Each measurement of a path is paired with one of the baseline taken in
                # turns with it, and the ratio is taken within the pair, so drift and other
                # load on the machine fall on both sides alike. The order rotates every round.
                turn = round_index % len(others)
                for path in [*others[turn:], *others[:turn]]:
                    rounds = mode.rounds if path.name in GOAL_PATHS else mode.context_rounds
                    if round_index >= rounds:
                        continue
                    await path.start(ctx, database)
                    try:
                        for op in path.ops:
                            for c in CONCURRENCY:
                                base, mine = await _measure_pair(
                                    baseline, path, op, c, work, rates, ctx
                                )
                                key = (path.name, op, c)
                                results.setdefault((baseline.name, op, c), []).append(base)
                                results.setdefault(key, []).append(mine)
                                ratios.setdefault(key, []).append(
                                    mine.rate / base.rate if base.rate else 0.0
                                )
                                cpu_ratios.setdefault(key, []).append(
                                    base.cpu_us_per_op / mine.cpu_us_per_op
                                    if mine.cpu_us_per_op
                                    else 0.0
                                )
                    finally:
                        await path.stop()
                ctx.log(f"hotpaths: round {round_index + 1} done")
        finally:
            await baseline.stop()
    tables = _tables(paths, results, ratios, cpu_ratios)
    loads = (load_before, os.getloadavg())
    tables[0].notes.append(
        "load average (1, 5, 15 min) before: {} after: {} (2 CPUs, shared)".format(
            *(", ".join(f"{x:.2f}" for x in load) for load in loads)
        )
    )
    return [*tables, _mapping_table()]


def _mapping_table() -> Table:
    """What turning one row into the library's `TutorialRecord` costs, against an ORM
    instance (what the tutorial's pattern hands back)."""
    import timeit
    from datetime import UTC, datetime

    from sqlalchemy.orm import configure_mappers, make_transient_to_detached

    from tutorials.models import Tutorial
    from tutorials.schemas import TutorialRecord

    configure_mappers()
    now = datetime.now(UTC)
    row = (1, "name", "https://a.io", DESCRIPTION, list(TAGS), now, now, 1)

    def constructor() -> Tutorial:
        tutorial = Tutorial(**dict(zip(repository.FIELDS, row, strict=True)))
        make_transient_to_detached(tutorial)
        return tutorial

    table = Table("Row to object, µs per row (best of 5)", ["way", "µs"])
    for name, make in (
        ("TutorialRecord(*row) (the library)", lambda: TutorialRecord(*row)),
        ("Tutorial(**row) + make_transient_to_detached (ORM)", constructor),
    ):
        best = min(timeit.repeat(make, number=2000, repeat=5)) / 2000
        table.rows.append({"way": name, "µs": best * 1e6})
    return table


async def _measure_pair(
    baseline: Path,
    path: Path,
    op: str,
    concurrency: int,
    work: Workload,
    rates: dict[tuple[str, int], float],
    ctx: Context,
) -> tuple[Sample, Sample]:
    """The baseline and the path on the same operation, in turns: `mode.chunks` slices of
    `duration / chunks` seconds each, so that a burst of load from elsewhere on the machine
    falls on both sides alike. Each side is warmed up before its first slice."""
    mode = ctx.mode
    chunks = max(1, mode.chunks)
    slices: dict[str, list[Sample]] = {baseline.name: [], path.name: []}
    for chunk in range(chunks):
        for side in (baseline, path):
            warmup = mode.warmup if chunk == 0 else min(mode.warmup, 0.05)
            slices[side.name].append(
                await _measure(
                    side, op, concurrency, work, rates, ctx, mode.duration / chunks, warmup
                )
            )
    return merged(slices[baseline.name]), merged(slices[path.name])


async def _measure(
    path: Path,
    op: str,
    concurrency: int,
    work: Workload,
    rates: dict[tuple[str, int], float],
    ctx: Context,
    duration: float,
    warmup: float,
) -> Sample:
    if op == "delete":
        expected = rates.get((path.name, concurrency), 5_000 if concurrency > 1 else 1_500)
        await work.refill_doomed(int(expected * (duration + warmup) * 1.5) + 500)
    sample = await drive(
        _operation(path, op, work, concurrency),
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
    )
    if op == "delete":
        rates[(path.name, concurrency)] = max(rates.get((path.name, concurrency), 0.0), sample.rate)
        await work.drop_leftovers()
    if sample.errors:
        ctx.log(
            f"  {path.name} {op} c={concurrency}: {sample.errors} errors, "
            f"first: {sample.first_error}"
        )
    return sample


def _tables(
    paths: list[Path],
    results: dict[Key, list[Sample]],
    ratios: dict[Key, list[float]],
    cpu_ratios: dict[Key, list[float]],
) -> list[Table]:
    baseline = paths[0].name
    tables: list[Table] = []

    def rate(name: str, op: str, c: int) -> float | None:
        samples = results.get((name, op, c))
        return median([s.rate for s in samples]) if samples else None

    def cpu(name: str, op: str, c: int) -> float | None:
        samples = results.get((name, op, c))
        return median([s.cpu_us_per_op for s in samples]) if samples else None

    for c in CONCURRENCY:
        table = Table(
            f"Hot paths at concurrency {c}: ops/s as a ratio to tuned raw asyncpg "
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
        table.rows.append(
            {"path": "asyncpg client CPU µs/op", **{op: cpu(baseline, op, c) for op in OPS}}
        )
        table.notes.append(
            f"pool of {POOL} on every path; {SEEDED:,} seeded rows; page = {PAGE} rows by "
            f"keyset; search = ranked full-text bounded to {SEARCH_CANDIDATES:,} candidates, "
            "queries matching <= 200 rows"
        )
        tables.append(table)

    cpu_table = Table(
        "Hot paths: client CPU per operation as a ratio, baseline µs / path µs "
        "(median of paired rounds; >= 1 means no more CPU than raw asyncpg)",
        ["path", "c", *OPS],
    )
    for path in paths[1:]:
        if path.name not in GOAL_PATHS and not path.name.startswith("ablation"):
            continue
        for c in CONCURRENCY:
            cells = {
                op: round(median(cpu_ratios[(path.name, op, c)]), 2)
                for op in OPS
                if (path.name, op, c) in cpu_ratios
            }
            cpu_table.rows.append({"path": path.name, "c": c, **cells})
    tables.append(cpu_table)

    detail = Table(
        "Hot paths: latency and client CPU per operation (median of rounds)",
        ["path", "op", "c", "ops/s", "p50 ms", "p99 ms", "max ms", "CPU us/op", "errors"],
    )
    for path in paths[:1] + [p for p in paths if p.name in GOAL_PATHS]:
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
    raw = Table(
        "Hot paths: every sample",
        ["path", "op", "c", "ops/s", "cpu us/op", "ratios", "cpu ratios"],
        printed=False,
    )
    for (name, op, c), samples in sorted(results.items()):
        raw.rows.append(
            {
                "path": name,
                "op": op,
                "c": c,
                "ops/s": [round(s.rate, 1) for s in samples],
                "cpu us/op": [round(s.cpu_us_per_op, 1) for s in samples],
                "ratios": [round(r, 3) for r in ratios.get((name, op, c), [])],
                "cpu ratios": [round(r, 3) for r in cpu_ratios.get((name, op, c), [])],
            }
        )
    tables.append(raw)
    return tables
