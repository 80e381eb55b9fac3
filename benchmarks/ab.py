"""Where the library's time goes, and what a change to `src/` bought: small paired measurements.

Not a suite of `run.py`: these are the tools behind the figures of a change (RESULTS.md).

    uv run python -m benchmarks.ab layers [--op get|page|search] [--concurrency 32]
    uv run python -m benchmarks.ab database --before REV [--concurrency 32]
    uv run python -m benchmarks.ab service --before REV
    uv run python -m benchmarks.ab search-rows --before REV
    uv run python -m benchmarks.ab input

- `layers`: the library's path peeled off one layer at a time, each driven like the hot paths
  (`core.drive`, N tasks on a pool of 20, 10,000 seeded rows) and in turns, the client's CPU
  per operation for each: the tuned baseline's pool, the library's pool with the same call,
  `Database.read` / `transaction` around it, the repository function, the service, the
  library function.
- `database`: `Database.read` of one row by id, `src/tutorials/db/database.py` as of REV
  against the working tree's, alternated over rounds.
- `service` / `search-rows`: the service's `list_page`, `search`, `find` (over a stand-in
  database that hands back 21 real asyncpg Records at once, so only Python is timed), and
  `repository.search` turning 21 rows into (record, rank), as of REV against the working
  tree's, alternated; process CPU time per call.

- `input`: what an insert's input costs before any I/O (timeit, best of 5): the caller's ORM
  `Tutorial(...)`, `TutorialCreate` validation through `service.new_tutorial`, and its parts.

An old module is loaded from `git show REV:path` under a name of its own; the modules it
imports are the working tree's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.core import SHORT, Context, admin_url_from_env, drive
from benchmarks.seed import pick_queries, seed

ROOT = Path(__file__).resolve().parent.parent
ROWS = 10_000


def old_module(rev: str, path: str, name: str) -> types.ModuleType:
    """`path` (e.g. src/tutorials/service.py) as of `rev`, as a module called `name`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses and typing look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # our own source, from git
    return module


async def _rows(dsn: str, rank: bool) -> list[asyncpg.Record]:
    """21 rows shaped like the library's (and a rank), as real asyncpg Records."""
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(
            "SELECT g::bigint AS tutorial_id, 'name ' || g AS name, "
            "'https://example.com/' || g AS url, 'a description' AS description, "
            "ARRAY['python', 'sql'] AS tags, now() AS created_at, now() AS updated_at, "
            "1 AS version" + (", 0.5::real AS rank" if rank else "") + " "
            "FROM generate_series(1, 21) AS g"
        )
    finally:
        await connection.close()


def _report(title: str, results: dict[str, list[float]], unit: str = "µs") -> None:
    first = statistics.median(next(iter(results.values())))
    print(f"## {title}")
    for name, values in results.items():
        value = statistics.median(values)
        print(f"{name:<34} {value:8.2f} {unit}  ({value - first:+.2f})  n={len(values)}")


async def _cpu_per_call(call: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) / calls * 1e6


# --- layers -----------------------------------------------------------------------------------


async def layers(ctx: Context, op: str, concurrency: int, rounds: int, seconds: float) -> None:
    from benchmarks import hotpaths
    from tutorials import repository, service
    from tutorials.db.session import default_database

    async with ctx.scratch_database("layers") as database:
        dsn = ctx.dsn(database)
        await seed(dsn, ROWS, label="layers")
        queries = [q.text for q in await pick_queries(dsn, ROWS) if q.matches <= 200]
        raw = hotpaths.RawAsyncpg()
        library = hotpaths.Library()
        await raw.start(ctx, database)
        await library.start(ctx, database)
        try:
            db = await default_database()
            await db.read(lambda c: c.fetchval("SELECT 1"))  # opens its pool
            pool: Any = db._primary.pool  # the library's own asyncpg pool (one layer only)
            rng = random.Random(1)
            page_sql, get_sql = repository.PAGE, repository.GET
            search_sql = hotpaths.SQL["search"]

            async def own_pool(call: Callable[[Any], Awaitable[object]]) -> object:
                async with pool.acquire() as connection:
                    return await call(connection)

            steps: dict[str, Callable[[int], Awaitable[object]]]
            if op == "get":

                def one() -> int:
                    return rng.randint(1, ROWS)

                steps = {
                    "tuned baseline": lambda _w: raw.get(one()),
                    "the library's pool": lambda _w: own_pool(lambda c: c.fetchrow(get_sql, one())),
                    "Database.read": lambda _w: db.read(lambda c: c.fetchrow(get_sql, one())),
                    "+ repository.get": lambda _w: db.read(lambda c: repository.get(c, one())),
                    "+ service.find": lambda _w: service.find(db, one()),
                    "library get_tutorial": lambda _w: library.get(one()),
                }
            elif op == "page":

                def after() -> int:
                    return rng.randint(0, ROWS - 100)

                steps = {
                    "tuned baseline": lambda _w: raw.page(after()),
                    "the library's pool": lambda _w: own_pool(
                        lambda c: c.fetch(page_sql, after(), 21)
                    ),
                    "Database.read": lambda _w: db.read(lambda c: c.fetch(page_sql, after(), 21)),
                    "+ repository.page": lambda _w: db.read(
                        lambda c: repository.page(c, after_id=after(), limit=21)
                    ),
                    "+ service.list_page": lambda _w: service.list_page(
                        db, limit=20, cursor=library.cursors[after() + 1]
                    ),
                    "library list_tutorials": lambda _w: library.page(after() + 1),
                }
            else:

                def query() -> str:
                    return rng.choice(queries)

                async def in_transaction(connection: Any) -> object:
                    await connection.execute(repository.CUSTOM_PLAN)
                    return await connection.fetch(search_sql, query(), 21, 2_000)

                four = hotpaths.RawAsyncpg(search_in_transaction=True)
                four.pool = raw.pool
                steps = {
                    "tuned baseline (3 round trips)": lambda _w: raw.search(query()),
                    "connection.transaction() (4)": lambda _w: four.search(query()),
                    "Database.transaction": lambda _w: db.transaction(
                        in_transaction, readonly=True
                    ),
                    "+ repository.search": lambda _w: db.transaction(
                        lambda c: repository.search(c, query(), limit=21, candidates=2_000),
                        readonly=True,
                    ),
                    "+ service.search": lambda _w: service.search(db, query(), limit=20),
                    "library search_tutorials": lambda _w: library.search(query()),
                }
            results: dict[str, list[float]] = {name: [] for name in steps}
            for round_index in range(rounds):
                names = list(steps)
                if round_index % 2:
                    names.reverse()
                for name in names:
                    sample = await drive(
                        steps[name], concurrency=concurrency, duration=seconds, warmup=0.2
                    )
                    results[name].append(sample.cpu_us_per_op)
            _report(
                f"{op}, {concurrency} tasks: client CPU µs per operation, layer by layer", results
            )
        finally:
            await library.stop()
            await raw.stop()


# --- database: one module against its older self ---------------------------------------------


async def database(
    ctx: Context, before: str, concurrency: int, rounds: int, seconds: float
) -> None:
    from tutorials import repository
    from tutorials.db import database as current
    from tutorials.settings import Settings

    old = old_module(before, "src/tutorials/db/database.py", "bench_old_database")
    async with ctx.scratch_database("abdb") as name:
        dsn = ctx.dsn(name)
        await seed(dsn, ROWS, label="abdb")
        settings = Settings(_env_file=None, pool_size=20, auto_migrate=False)  # type: ignore[call-arg]
        rng = random.Random(1)
        versions = {f"database.py at {before}": old, "database.py now": current}
        results: dict[str, list[float]] = {name: [] for name in versions}
        for round_index in range(rounds):
            names = list(versions)
            if round_index % 2:
                names.reverse()
            for label in names:
                db = versions[label].Database.from_url(dsn, settings)
                try:
                    sample = await drive(
                        lambda _w, db=db: db.read(
                            lambda c: repository.get(c, rng.randint(1, ROWS))
                        ),
                        concurrency=concurrency,
                        duration=seconds,
                        warmup=0.3,
                    )
                finally:
                    await db.dispose()
                results[label].append(sample.cpu_us_per_op)
        _report(f"Database.read(get), {concurrency} tasks: client CPU µs per operation", results)


# --- service / repository: Python only ------------------------------------------------------------


async def service(ctx: Context, before: str, rounds: int, calls: int) -> None:
    from tutorials import service as current

    old = old_module(before, "src/tutorials/service.py", "bench_old_service")
    rows = await _rows(ctx.dsn(ctx.admin_url.database or "postgres"), rank=False)
    ranked = await _rows(ctx.dsn(ctx.admin_url.database or "postgres"), rank=True)

    class Stand:
        """What the service asks of a connection, answered at once with real Records."""

        async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
            return ranked if "ts_rank" in query else rows

        async def fetchrow(self, query: str, *args: object) -> asyncpg.Record:
            return rows[0]

        async def execute(self, query: str, *args: object) -> str:
            return ""

    class StandSettings:
        search_candidates = 2_000

    class StandDatabase:
        settings = StandSettings()

        async def read(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
            return await work(Stand())

        async def transaction(self, work: Callable[[Any], Awaitable[Any]], **_: object) -> Any:
            return await work(Stand())

    db: Any = StandDatabase()
    versions = {f"service.py at {before}": old, "service.py now": current}
    cursors = {
        label: module._encode_cursor(module._fingerprint("i", None, []), [1234])
        for label, module in versions.items()
    }
    cases: dict[str, Callable[[str, Any], Awaitable[object]]] = {
        "list_page with a cursor": lambda label, m: m.list_page(
            db, limit=20, cursor=cursors[label]
        ),
        "list_page, first page": lambda label, m: m.list_page(db, limit=20),
        "search": lambda _label, m: m.search(db, "postgres async", limit=20),
        "find": lambda _label, m: m.find(db, 5),
    }
    for case, call in cases.items():
        results: dict[str, list[float]] = {label: [] for label in versions}
        for round_index in range(rounds):
            labels = list(versions) if round_index % 2 else list(versions)[::-1]
            for label in labels:
                module = versions[label]
                results[label].append(
                    await _cpu_per_call(lambda: call(label, module), calls)  # noqa: B023
                )
        _report(f"service.{case}: process CPU µs per call", results)


async def search_rows(ctx: Context, before: str, rounds: int, calls: int) -> None:
    from tutorials import repository as current

    old = old_module(before, "src/tutorials/repository.py", "bench_old_repository")
    ranked = await _rows(ctx.dsn(ctx.admin_url.database or "postgres"), rank=True)

    class Stand:
        async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
            return ranked

        async def execute(self, query: str, *args: object) -> str:
            return ""

    stand: Any = Stand()
    versions = {f"repository.py at {before}": old, "repository.py now": current}
    results: dict[str, list[float]] = {label: [] for label in versions}
    for round_index in range(rounds):
        labels = list(versions) if round_index % 2 else list(versions)[::-1]
        for label in labels:
            module = versions[label]
            results[label].append(
                await _cpu_per_call(
                    lambda: module.search(stand, "postgres", limit=21),  # noqa: B023
                    calls,
                )
            )
    _report("repository.search over 21 rows: process CPU µs per call", results)


def input_costs() -> None:
    import timeit

    from benchmarks.hotpaths import DESCRIPTION, TAGS
    from tutorials import schemas
    from tutorials import service as current
    from tutorials.models import Tutorial

    url = "https://bench.example/abcd/1"
    fields = {"name": "bench 1", "url": url, "description": DESCRIPTION, "tags": list(TAGS)}
    cases: dict[str, Callable[[], object]] = {
        "Tutorial(...) (the caller's ORM object)": lambda: Tutorial(**fields),
        "service.new_tutorial (TutorialCreate)": lambda: current.new_tutorial(fields),
        "  normalise_tag, both tags": lambda: [schemas.normalise_tag(t) for t in TAGS],
        "  normalise_url": lambda: schemas.normalise_url(url),
        "  normalise_name + normalise_text": lambda: (
            schemas.normalise_name("bench 1"),
            schemas.normalise_text(DESCRIPTION),
        ),
    }
    print("## an insert's input, µs per call (timeit, best of 5)")
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=20_000, repeat=5)) / 20_000
        print(f"{name:<42} {best * 1e6:7.2f} µs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("what", choices=["layers", "database", "service", "search-rows", "input"])
    parser.add_argument("--before", default="4a57a04", help="the older commit (default: core)")
    parser.add_argument("--op", choices=["get", "page", "search"], default="get")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.8, help="per driven measurement")
    parser.add_argument("--calls", type=int, default=5_000, help="per timed Python loop")
    args = parser.parse_args(argv)
    ctx = Context(mode=SHORT, admin_url=admin_url_from_env())
    if args.what == "input":
        input_costs()
        return
    if args.what == "layers":
        job = layers(ctx, args.op, args.concurrency, args.rounds, args.seconds)
    elif args.what == "database":
        job = database(ctx, args.before, args.concurrency, args.rounds, args.seconds)
    elif args.what == "service":
        job = service(ctx, args.before, args.rounds * 2, args.calls)
    else:
        job = search_rows(ctx, args.before, args.rounds * 2, args.calls)
    asyncio.run(job)


if __name__ == "__main__":
    main()
