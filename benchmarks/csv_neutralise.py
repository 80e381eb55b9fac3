"""What neutralising CSV cells for spreadsheets costs the export's COPY (transfer/sql.py).

500,000 rows in a scratch database on the server at BENCH_URL (default: the system
PostgreSQL, dropped afterwards). For the plain SELECT (`raw`), the shipped one (`shipped`,
`sql._EXPORT_CSV`) and two slower forms it was chosen against, alternating, 7 rounds: the
server's execution time of the SELECT (`EXPLAIN (ANALYZE, TIMING OFF)`: the projection is
computed, nothing is sent) and the wall time of the COPY streamed to this process. Prints the
best and the median of each, and checks that the neutralising forms give the same bytes.

    ./dev python benchmarks/csv_neutralise.py
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable

import asyncpg

from tutorials.transfer import sql

SERVER = os.environ.get("BENCH_URL", "postgresql://postgres@127.0.0.1:5432")
SCRATCH = "bounds_csv_neutralise"
ROWS = 500_000
ROUNDS = 7
CLASS = "[=+@\\t\\r-]"


def with_left(value: str, start: str | None = None) -> str:
    start = start or value
    return (
        f"CASE WHEN left({start}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r') "
        f"OR (left({start}, 1) = '''' AND {start} ~ E'^''+{CLASS}') "
        f"THEN '''' || {value} ELSE {value} END"
    )


def with_simple_case(value: str, start: str | None = None) -> str:
    start = start or value
    marked = "'''' || " + value
    whens = " ".join(f"WHEN {code} THEN {marked}" for code in (61, 43, 45, 64, 9, 13))
    quoted = f"WHEN 39 THEN CASE WHEN {start} ~ E'^''+{CLASS}' THEN {marked} ELSE {value} END"
    return f"CASE ascii({start}) {whens} {quoted} ELSE {value} END"


def select(neutralised: Callable[..., str]) -> str:
    return (
        f"SELECT {neutralised('name')} AS name, url, "
        f"{neutralised('description')} AS description, "
        f"{neutralised(sql._TAGS_CELL, 'tags[1]')} AS tags FROM tutorials ORDER BY tutorial_id"
    )


async def main() -> None:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH}")
    await admin.execute(f"CREATE DATABASE {SCRATCH}")
    connection = await asyncpg.connect(f"{SERVER}/{SCRATCH}")
    try:
        await connection.execute(
            "CREATE TABLE tutorials (tutorial_id bigserial PRIMARY KEY, name text, url text, "
            "description text, tags text[])"
        )
        await connection.execute(
            "INSERT INTO tutorials (name, url, description, tags) "
            "SELECT CASE WHEN n % 100 = 0 THEN '=x' || n ELSE 'Tutorial ' || n END, "
            "'https://example.com/' || n, repeat('d', 100), ARRAY['python', 'sql'] "
            "FROM generate_series(1, $1) AS n",
            ROWS,
        )
        await connection.execute("VACUUM ANALYZE tutorials")
        variants = {
            "raw": sql._EXPORT_CSV_RAW.replace("{where}", ""),
            "shipped": sql._EXPORT_CSV.replace("{where}", ""),
            "left": select(with_left),
            "simple_case": select(with_simple_case),
        }
        server: dict[str, list[float]] = {name: [] for name in variants}
        wall: dict[str, list[float]] = {name: [] for name in variants}
        outputs: dict[str, bytes] = {}
        for _ in range(ROUNDS):
            for name, query in variants.items():
                plan = await connection.fetchval(
                    f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}"
                )
                server[name].append(json.loads(plan)[0]["Execution Time"] / 1000)
                out = bytearray()

                async def sink(data: bytes, out: bytearray = out) -> None:
                    out.extend(data)

                started = time.perf_counter()
                await connection.copy_from_query(query, output=sink, format="csv")
                wall[name].append(time.perf_counter() - started)
                outputs[name] = bytes(out)
        for name in variants:
            print(
                f"{name:12} server best {min(server[name]):.3f} s, median "
                f"{statistics.median(server[name]):.3f} s; COPY best {min(wall[name]):.3f} s, "
                f"median {statistics.median(wall[name]):.3f} s"
            )
        same = outputs["shipped"] == outputs["left"] == outputs["simple_case"]
        print(f"neutralising forms give the same bytes: {same}")
    finally:
        await connection.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH}")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
