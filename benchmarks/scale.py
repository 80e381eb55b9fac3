"""Goal 4: latency as the table grows (10,000 rows, then 1,000,000; 10,000,000 with --huge).

For each size: a scratch database seeded inside PostgreSQL (`benchmarks.seed`), then sequential
calls through the public library functions (what a user waits for), each figure from many
samples: get by id (random ids), the first keyset page, a deep keyset page (a cursor in the last
tenth of the ids), tag-filtered pages (a common and a rare tag), and ranked search for queries
grouped by how many rows they match. Every size's figure is also shown as a ratio to the
smallest size's. `EXPLAIN (ANALYZE, BUFFERS)` of the deep page, the tag page and the widest
search are saved in the JSON file.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks.core import Context, Table, percentile
from benchmarks.hotpaths import Library
from benchmarks.seed import Query, pick_queries, seed

NAME = "scale"
PAGE = 20


async def _latencies(call: Callable[[], Awaitable[object]], samples: int) -> list[int]:
    for _ in range(min(20, samples)):  # warm the connection's statement cache
        await call()
    latencies = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        await call()
        latencies.append(time.perf_counter_ns() - start)
    return latencies


def _ms(latencies: list[int], q: float) -> float:
    return percentile(latencies, q) / 1e6


async def _explain(dsn: str, sql: str, *args: object) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    finally:
        await connection.close()
    return "\n".join(row[0] for row in rows)


async def measure_size(ctx: Context, rows: int) -> dict[str, Any]:
    """Seed a database of `rows` tutorials and time the library's reads on it."""
    import tutorials

    samples = ctx.mode.scale_samples
    rng = random.Random(rows)
    async with ctx.scratch_database(f"scale{rows}") as database:
        dsn = ctx.dsn(database)
        seeded = await seed(dsn, rows, label="scale")
        ctx.log(f"scale: seeded {rows:,} rows in {seeded.seconds:.1f}s")
        queries = await pick_queries(dsn, rows)
        library = Library()
        await library.start(ctx, database)
        try:
            max_id = rows
            deep_start = max_id - max_id // 10
            figures: dict[str, list[int]] = {
                "get by id": await _latencies(
                    lambda: tutorials.get_tutorial(rng.randint(1, max_id)), samples
                ),
                "first page": await _latencies(
                    lambda: tutorials.list_tutorials(limit=PAGE), samples
                ),
                "deep page": await _latencies(
                    lambda: library.page(rng.randint(deep_start, max_id - PAGE)), samples
                ),
                "page, common tag": await _latencies(
                    lambda: tutorials.list_tutorials(limit=PAGE, tags=["tag00"]), samples
                ),
                "page, rare tag": await _latencies(
                    lambda: tutorials.list_tutorials(limit=PAGE, tags=["tag39"]), samples
                ),
            }
            search_samples = max(5, samples // (2 * len(queries)))
            by_band: dict[str, list[int]] = {}
            per_query: list[dict[str, Any]] = []
            for query in queries:
                latencies = await _latencies(
                    lambda q=query: tutorials.search_tutorials(q.text, limit=PAGE), search_samples
                )
                by_band.setdefault(query.band, []).extend(latencies)
                per_query.append(
                    {
                        "query": query.text,
                        "matches": query.matches,
                        "band": query.band,
                        "p50 ms": _ms(latencies, 50),
                    }
                )
            figures["search (all bands)"] = [x for band in by_band.values() for x in band]
            for band, latencies in by_band.items():
                figures[f"search, {band}"] = latencies
            plans = await _plans(dsn, queries, deep_start)
        finally:
            await library.stop()
    return {
        "rows": rows,
        "seed seconds": round(seeded.seconds, 1),
        "figures": {
            name: {"p50 ms": _ms(values, 50), "p99 ms": _ms(values, 99), "n": len(values)}
            for name, values in figures.items()
        },
        "queries": per_query,
        "plans": plans,
    }


async def _plans(dsn: str, queries: list[Query], deep_start: int) -> dict[str, str]:
    from tutorials import repository
    from tutorials.settings import get_settings

    widest = max(queries, key=lambda q: q.matches)
    return {
        "deep page": await _explain(dsn, repository._PAGE_SQL, deep_start, PAGE + 1),
        "page, rare tag": await _explain(dsn, repository._PAGE_TAGS_SQL, 0, PAGE + 1, ["tag39"]),
        f"search {widest.text!r} ({widest.matches:,} matches, exact)": await _explain(
            dsn, repository._SEARCH_SQL.format(filters=""), widest.text, PAGE + 1
        ),
        f"search {widest.text!r} (bounded, as the library runs it)": await _explain(
            dsn,
            repository._SEARCH_BOUNDED_SQL.format(found="", after="", bound=3),
            widest.text,
            PAGE + 1,
            get_settings().search_candidates,
        ),
    }


async def run(ctx: Context) -> list[Table]:
    sizes = ctx.mode.scale_sizes + tuple(ctx.extras.get("huge_sizes", ()))
    results = [await measure_size(ctx, rows) for rows in sizes]
    base = results[0]
    names = list(base["figures"])
    table = Table(
        "Scale: library latency by table size, p50 / p99 in ms (x = p50 ratio to the smallest)",
        ["figure", *(f"{r['rows']:,} rows" for r in results)],
    )
    for name in names:
        row: dict[str, Any] = {"figure": name}
        for result in results:
            figure = result["figures"].get(name)
            if figure is None:
                continue
            ratio = figure["p50 ms"] / base["figures"][name]["p50 ms"]
            cell = f"{figure['p50 ms']:.2f} / {figure['p99 ms']:.2f}"
            row[f"{result['rows']:,} rows"] = cell if result is base else f"{cell} ({ratio:.2f}x)"
        table.rows.append(row)
    table.notes.append(
        "sequential calls through tutorials.get_tutorial / list_tutorials / search_tutorials; "
        f"page = {PAGE} rows; deep page = a cursor in the last tenth of the ids; search bands "
        "group queries by the share of rows they match"
    )
    table.notes += [f"{r['rows']:,} rows seeded in {r['seed seconds']}s" for r in results]
    queries = Table(
        "Scale: search p50 by query (largest size)",
        ["query", "matches", "band", "p50 ms"],
        rows=results[-1]["queries"],
    )
    plans = Table(
        "Scale: EXPLAIN (ANALYZE, BUFFERS) at the largest size",
        ["statement", "plan"],
        rows=[{"statement": k, "plan": v} for k, v in results[-1]["plans"].items()],
        printed=False,
    )
    return [table, queries, plans]
