"""Goal 4: latency as the table grows (10,000 rows, then 1,000,000; 10,000,000 with --huge),
each figure beside tuned raw asyncpg sending the same statement.

For each size: a scratch database seeded inside PostgreSQL (`benchmarks.seed`), then sequential
calls through the public library functions (what a user waits for), each figure from many
samples: get by id (random ids), the first keyset page, a deep keyset page (a cursor in the last
tenth of the ids), tag-filtered pages (a common and a rare tag), and ranked search for queries
grouped by how many rows they match. Each library call alternates with the same call made by
the hot paths' tuned baseline (`hotpaths.RawAsyncpg`: asyncpg's pool with a no-op reset, the
repository's statements, Records), so the two see the same machine. Every size's figure is also
shown as a ratio to the smallest size's. `EXPLAIN (ANALYZE, BUFFERS)` of the deep page, the tag
page and the widest search are saved in the JSON file.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks.core import Context, Table, percentile
from benchmarks.hotpaths import Library, RawAsyncpg, page_cursor
from benchmarks.seed import Query, pick_queries, seed
from tutorials import repository

NAME = "scale"
PAGE = 20


async def _latencies(
    library: Callable[[int], Awaitable[object]],
    raw: Callable[[int], Awaitable[object]],
    samples: int,
) -> tuple[list[int], list[int]]:
    """Time `samples` calls of each, alternating (library, then baseline, same input `i`)."""
    for i in range(min(20, samples)):  # warm the connections' statement caches
        await library(i)
        await raw(i)
    ours: list[int] = []
    theirs: list[int] = []
    clock = time.perf_counter_ns
    for i in range(samples):
        start = clock()
        await library(i)
        middle = clock()
        await raw(i)
        ours.append(middle - start)
        theirs.append(clock() - middle)
    return ours, theirs


def _ms(latencies: list[int], q: float) -> float:
    return percentile(latencies, q) / 1e6


async def _explain(dsn: str, sql: str, *args: object, custom_plan: bool = False) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction(readonly=True):
            if custom_plan:  # as the library runs a bounded search
                await connection.execute(repository.CUSTOM_PLAN)
            rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    finally:
        await connection.close()
    return "\n".join(row[0] for row in rows)


async def measure_size(ctx: Context, rows: int) -> dict[str, Any]:
    """Seed a database of `rows` tutorials and time the library's reads (and the baseline's)."""
    import tutorials

    samples = ctx.mode.scale_samples
    rng = random.Random(rows)
    async with ctx.scratch_database(f"scale{rows}") as database:
        dsn = ctx.dsn(database)
        seeded = await seed(dsn, rows, label="scale")
        ctx.log(f"scale: seeded {rows:,} rows in {seeded.seconds:.1f}s")
        queries = await pick_queries(dsn, rows)
        library = Library()
        raw = RawAsyncpg()
        await library.start(ctx, database)
        await raw.open(dsn)
        try:
            max_id = rows
            deep_start = max_id - max_id // 10
            ids = [rng.randint(1, max_id) for _ in range(samples)]
            deep = [rng.randint(deep_start, max_id - PAGE) for _ in range(samples)]
            cursors = [page_cursor(after_id) for after_id in deep]  # made before timing
            figures: dict[str, tuple[list[int], list[int]]] = {
                "get by id": await _latencies(
                    lambda i: tutorials.get_tutorial(ids[i]), lambda i: raw.get(ids[i]), samples
                ),
                "first page": await _latencies(
                    lambda _i: tutorials.list_tutorials(limit=PAGE),
                    lambda _i: raw.page(0),
                    samples,
                ),
                "deep page": await _latencies(
                    lambda i: tutorials.list_tutorials(limit=PAGE, cursor=cursors[i]),
                    lambda i: raw.page(deep[i]),
                    samples,
                ),
                "page, common tag": await _latencies(
                    lambda _i: tutorials.list_tutorials(limit=PAGE, tags=["tag00"]),
                    lambda _i: raw.page(0, ["tag00"]),
                    samples,
                ),
                "page, rare tag": await _latencies(
                    lambda _i: tutorials.list_tutorials(limit=PAGE, tags=["tag39"]),
                    lambda _i: raw.page(0, ["tag39"]),
                    samples,
                ),
            }
            search_samples = max(5, samples // (2 * len(queries)))
            by_band: dict[str, tuple[list[int], list[int]]] = {}
            per_query: list[dict[str, Any]] = []
            for query in queries:
                ours, theirs = await _latencies(
                    lambda _i, q=query: tutorials.search_tutorials(q.text, limit=PAGE),
                    lambda _i, q=query: raw.search(q.text),
                    search_samples,
                )
                band = by_band.setdefault(query.band, ([], []))
                band[0].extend(ours)
                band[1].extend(theirs)
                per_query.append(
                    {
                        "query": query.text,
                        "matches": query.matches,
                        "band": query.band,
                        "p50 ms": _ms(ours, 50),
                        "asyncpg p50 ms": _ms(theirs, 50),
                    }
                )
            figures["search (all bands)"] = (
                [x for band in by_band.values() for x in band[0]],
                [x for band in by_band.values() for x in band[1]],
            )
            for name, band in by_band.items():
                figures[f"search, {name}"] = band
            plans = await _plans(dsn, queries, deep_start)
        finally:
            await raw.stop()
            await library.stop()
    return {
        "rows": rows,
        "seed seconds": round(seeded.seconds, 1),
        "figures": {
            name: {
                "p50 ms": _ms(ours, 50),
                "p99 ms": _ms(ours, 99),
                "asyncpg p50 ms": _ms(theirs, 50),
                "asyncpg p99 ms": _ms(theirs, 99),
                "n": len(ours),
            }
            for name, (ours, theirs) in figures.items()
        },
        "queries": per_query,
        "plans": plans,
    }


async def _plans(dsn: str, queries: list[Query], deep_start: int) -> dict[str, str]:
    from tutorials.settings import get_settings

    widest = max(queries, key=lambda q: q.matches)
    exact = repository.search_statement(False, False, False)
    bounded = repository.search_statement(False, False, True)
    return {
        "deep page": await _explain(dsn, repository.PAGE, deep_start, PAGE + 1),
        "page, rare tag": await _explain(dsn, repository.PAGE_TAGGED, 0, PAGE + 1, ["tag39"]),
        f"search {widest.text!r} ({widest.matches:,} matches, exact)": await _explain(
            dsn, exact, widest.text, PAGE + 1
        ),
        f"search {widest.text!r} (bounded, as the library runs it)": await _explain(
            dsn,
            bounded,
            widest.text,
            PAGE + 1,
            get_settings().search_candidates,
            custom_plan=True,
        ),
    }


async def run(ctx: Context) -> list[Table]:
    sizes = ctx.mode.scale_sizes + tuple(ctx.extras.get("huge_sizes", ()))
    results = [await measure_size(ctx, rows) for rows in sizes]
    base = results[0]
    names = list(base["figures"])
    columns = [f"{r['rows']:,} rows" for r in results]
    table = Table(
        "Scale: library latency by table size, p50 / p99 in ms (x = p50 ratio to the smallest)",
        ["figure", *columns],
    )
    versus = Table(
        "Scale: library p50 against tuned raw asyncpg sending the same statement, ms "
        "(library / asyncpg, and the speed ratio asyncpg p50 ÷ library p50)",
        ["figure", *columns],
    )
    for name in names:
        row: dict[str, Any] = {"figure": name}
        pair: dict[str, Any] = {"figure": name}
        for result, column in zip(results, columns, strict=True):
            figure = result["figures"].get(name)
            if figure is None:
                continue
            ratio = figure["p50 ms"] / base["figures"][name]["p50 ms"]
            cell = f"{figure['p50 ms']:.2f} / {figure['p99 ms']:.2f}"
            row[column] = cell if result is base else f"{cell} ({ratio:.2f}x)"
            speed = figure["asyncpg p50 ms"] / figure["p50 ms"] if figure["p50 ms"] else 0.0
            pair[column] = f"{figure['p50 ms']:.2f} / {figure['asyncpg p50 ms']:.2f} ({speed:.2f})"
        table.rows.append(row)
        versus.rows.append(pair)
    table.notes.append(
        "sequential calls through tutorials.get_tutorial / list_tutorials / search_tutorials; "
        f"page = {PAGE} rows; deep page = a cursor in the last tenth of the ids; search bands "
        "group queries by the share of rows they match"
    )
    table.notes += [f"{r['rows']:,} rows seeded in {r['seed seconds']}s" for r in results]
    versus.notes.append(
        "each library call is followed by the same call on asyncpg's pool (no-op reset, the "
        "repository's statements, rows left as Records); one connection in use at a time"
    )
    queries = Table(
        "Scale: search p50 by query (largest size)",
        ["query", "matches", "band", "p50 ms", "asyncpg p50 ms"],
        rows=results[-1]["queries"],
    )
    plans = Table(
        "Scale: EXPLAIN (ANALYZE, BUFFERS) at the largest size",
        ["statement", "plan"],
        rows=[{"statement": k, "plan": v} for k, v in results[-1]["plans"].items()],
        printed=False,
    )
    return [table, versus, queries, plans]
