"""Bulk import / export against PostgreSQL's own `psql \\copy`, same rows, same table, same run.

    uv run python -m benchmarks.bulk --rows 1000000 [--rounds 2] [--urlless 0.1]
    uv run python -m benchmarks.bulk --export-only --rows 1000000 --rounds 5 \\
        [--database bulk_export] [--before /tmp/old/src]
    uv run python -m benchmarks.run --suite bulk [--full]     (100,000 rows; --full: 1,000,000)

`--export-only` skips the import comparison (steps 2-4): the table is loaded once by psql
`\\copy`, untimed. `--database NAME` uses (and keeps) that database on the benchmark server,
loading it only when its table is empty, so repeated export runs skip the load. `--before SRC`
also runs the export from another source tree (`PYTHONPATH=SRC`, e.g. a copy of `src/` before
a change), paired with ours in every round, so a before/after comparison shares the same noise.

What it does, on a scratch database at the migrations' head (dropped afterwards):

1. Generates N tutorials (fixed seed) as two CSV files holding the same rows: ours (tags joined
   by `;`) and psql's (tags as an array literal, which is what `\\copy` into `text[]` needs).
2. Per round, on an emptied table (TRUNCATE ... RESTART IDENTITY, CHECKPOINT): `psql \\copy`
   into `tutorials`, then `tutorials import` end to end (a subprocess through the CLI, as a user
   runs it); the order alternates between rounds so that machine noise falls on both. The
   import's wall time, CPU time and peak RSS come from `os.wait4` on its own process.
3. Checks that both loads left the same rows (count, and an md5 over every row's content).
4. Runs the same import again (everything already there: the idempotent re-run).
5. Exports: `psql \\copy (SELECT ...) TO` against `tutorials export` (CSV with its default of
   one COPY stream and with `--jobs 2`; NDJSON against psql running the same query), the order
   rotated each round, and checks that our files are byte-identical to psql's.

The goal (issue 4): import and export at >= 0.8x psql's rows/s. The machine is shared and has 2
cores: what counts is the ratio within a round, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.core import SHORT, Context, Table, admin_url_from_env, median, psql_binary

NAME = "bulk"

WORDS = [
    *("python", "async", "sql", "postgres", "copy", "bulk", "stream", "index", "query", "table"),
    *("rust", "go", "web", "api", "data", "test", "fast", "learn", "guide", "intro", "deep"),
    *("cache", "queue", "lock", "batch", "vector", "graph"),
]

CHECKSUM = (
    "SELECT count(*), md5(string_agg(md5(name || '|' || coalesce(url, '') || '|' || "
    "coalesce(description, '') || '|' || array_to_string(tags, ';')), '' ORDER BY "
    "name, url, description)) FROM tutorials"
)


@dataclass
class Run:
    """One timed process: wall seconds, CPU seconds, peak RSS (MiB), exit code."""

    seconds: float
    cpu: float
    rss_mib: float
    code: int
    stderr: str

    def rate(self, rows: int) -> float:
        return rows / self.seconds if self.seconds else 0.0


def generate(directory: Path, rows: int, urlless: float, seed: int = 42) -> tuple[Path, Path]:
    """Our CSV and psql's, with the same rows (quotes, commas, newlines, unicode included)."""
    rnd = random.Random(seed)
    ours, theirs = directory / "tutorials.csv", directory / "tutorials_psql.csv"
    with (
        ours.open("w", newline="", encoding="utf-8") as a,
        theirs.open("w", newline="", encoding="utf-8") as b,
    ):
        mine, psql = csv.writer(a), csv.writer(b)
        mine.writerow(["name", "url", "description", "tags"])
        psql.writerow(["name", "url", "description", "tags"])
        for i in range(rows):
            name = f"Tutorial {i}: " + " ".join(rnd.choices(WORDS, k=4))
            url = "" if rnd.random() < urlless else f"https://example.com/tutorials/{i}"
            description = " ".join(rnd.choices(WORDS, k=12))
            if i % 10 == 0:
                description += ', with "quotes", commas\nand a second line — ünïcödé'
            tags = sorted(set(rnd.choices(WORDS, k=3)))
            mine.writerow([name, url, description, ";".join(tags)])
            psql.writerow([name, url, description, "{" + ",".join(tags) + "}"])
    return ours, theirs


def timed(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a process to the end: its own wall time, CPU time and peak RSS.

    The peak RSS comes from GNU time when it is installed: a child started straight from this
    (large) Python process would report this process's RSS as its own (`ru_maxrss` keeps the
    address space it had before exec).
    """
    report = None
    if Path("/usr/bin/time").exists():
        descriptor, name = tempfile.mkstemp(prefix="bulk-time-")
        os.close(descriptor)
        report = Path(name)
        argv = ["/usr/bin/time", "-q", "-o", str(report), "-f", "%M", *argv]
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss
    if report is not None:
        with contextlib.suppress(ValueError, OSError):
            rss_kib = int(report.read_text().split()[-1])
        report.unlink(missing_ok=True)
    return Run(seconds, usage.ru_utime + usage.ru_stime, rss_kib / 1024, process.returncode, error)


def tutorials_command() -> list[str]:
    """The `tutorials` console script of this environment (what a user runs)."""
    script = Path(sys.executable).with_name("tutorials")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tutorials.cli import main; main()"]


async def execute(dsn: str, *statements: str) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        results = [await connection.fetch(statement) for statement in statements]
    finally:
        await connection.close()
    return results


async def empty(dsn: str) -> None:
    await execute(dsn, "TRUNCATE tutorials RESTART IDENTITY", "CHECKPOINT")


async def checksum(dsn: str) -> tuple[int, str]:
    (rows,) = await execute(dsn, CHECKSUM)
    return int(rows[0][0]), str(rows[0][1])


def psql(dsn: str, command: str) -> Run:
    return timed([psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", command])


def our_env(dsn: str, source: Path | None = None) -> dict[str, str]:
    """The CLI's environment: this database, and Python caching its bytecode as it does on a
    normal installation (a harness may set PYTHONDONTWRITEBYTECODE, which makes every start
    compile SQLAlchemy, pydantic, ... from source: ~2.5 s of CPU that no user pays twice).
    `source`: run the package from that source tree instead (the `--before` comparison)."""
    env = {**os.environ, "DATABASE_URL": dsn, "TUTORIALS_AUTO_MIGRATE": "false"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    return env


def ours(dsn: str, *args: str, source: Path | None = None) -> Run:
    return timed([*tutorials_command(), *args], our_env(dsn, source))


def warm_up(dsn: str, directory: Path, source: Path | None = None) -> Run:
    """One untimed start, so the bytecode cache exists (as after any first run); an export
    that matches no row, so its time is the CLI's start-up (the empty table's before an
    import, whatever the table holds with `--export-only`)."""
    target = directory / "warm-up.csv"
    argv = ["export", str(target), "--tag", "bench-warm-up-matches-nothing", "--quiet"]
    return timed([*tutorials_command(), *argv], our_env(dsn, source))


def _check(run: Run, what: str) -> Run:
    if run.code != 0:
        raise RuntimeError(f"{what} failed ({run.code}): {run.stderr.strip()[-500:]}")
    return run


async def measure(
    dsn: str,
    rows: int,
    rounds: int,
    urlless: float,
    log: Any = print,
    *,
    export_only: bool = False,
    before: Path | None = None,
) -> list[Table]:
    directory = Path(tempfile.mkdtemp(prefix="tutorials-bulk-"))
    try:
        log(f"bulk: generating {rows:,} rows ({urlless:.0%} without url)")
        mine, theirs = generate(directory, rows, urlless)
        size_mib = mine.stat().st_size / 2**20
        load = (
            f"\\copy tutorials(name, url, description, tags) FROM '{theirs}' "
            "WITH (FORMAT csv, HEADER true)"
        )
        startup = _check(warm_up(dsn, directory), "warm-up")
        if before is not None:
            _check(warm_up(dsn, directory, before), "warm-up (before)")
        runs: dict[str, list[Run]] = {}
        if export_only:
            stored, _ = await checksum(dsn)
            if stored == 0:
                log("bulk: loading the table with psql \\copy (untimed)")
                _check(psql(dsn, load), "psql \\copy")
                stored, _ = await checksum(dsn)
        else:
            stored = await _imports(dsn, rows, rounds, urlless, mine, load, runs, log)
        await _exports(dsn, rounds, directory, before, runs, log)

        table = Table(
            f"Bulk transfer, {stored:,} rows ({size_mib:.0f} MiB CSV)",
            ["operation", "seconds", "rows/s", "vs psql", "cpu s", "peak RSS MiB"],
        )

        def row(name: str, key: str, base_key: str | None) -> None:
            measured = runs.get(key)
            if not measured:
                return
            seconds = median([run.seconds for run in measured])
            base = None
            if base_key is not None:
                # the ratio within each round (same noise), then the median over rounds
                base = median(
                    [
                        b.seconds / r.seconds
                        for b, r in zip(runs[base_key], measured, strict=False)
                        if r.seconds
                    ]
                )
            table.rows.append(
                {
                    "operation": name,
                    "seconds": seconds,
                    "rows/s": stored / seconds if seconds else 0.0,
                    "vs psql": base,
                    "cpu s": median([run.cpu for run in measured]),
                    "peak RSS MiB": max(run.rss_mib for run in measured),
                }
            )

        row("psql \\copy FROM (baseline)", "psql import", None)
        row("tutorials import (csv)", "import", "psql import")
        row("tutorials import again (all unchanged)", "import again", "psql import")
        row("psql \\copy TO (baseline)", "psql export", None)
        row("tutorials export (csv)", "export csv", "psql export")
        row("tutorials export (csv), --jobs 2", "export csv -j2", "psql export")
        row("psql \\copy TO, the NDJSON query (baseline)", "psql export ndjson", None)
        row("tutorials export (ndjson)", "export ndjson", "psql export ndjson")
        row("tutorials export (csv), --before tree", "before csv", "psql export")
        row("tutorials export (ndjson), --before tree", "before ndjson", "psql export ndjson")
        table.notes += [
            f"median of {rounds} round(s); vs psql = psql seconds / our seconds within each "
            "round, median over rounds (>= 0.8 is the goal); the order of the runs rotates "
            "each round",
            "our exports are byte-identical to psql's (NDJSON: to psql running the same query)"
            + ("" if export_only else "; both loads left identical content (count and md5)"),
            f"{urlless:.0%} of rows without url (matched on their whole content on re-import)",
            f"our figures include the CLI's start-up (an export matching no row takes "
            f"{startup.seconds:.2f} s, {startup.cpu:.2f} s CPU): with bytecode cached",
        ]
        if not export_only:
            best_psql = min(r.seconds for r in runs["psql import"])
            best_ours = min(r.seconds for r in runs["import"])
            table.notes.insert(
                1,
                "psql and import alternate order each round, on an emptied table (TRUNCATE, "
                f"CHECKPOINT) each time; best import ratio: {best_psql / best_ours:.2f}",
            )
        if before is not None:
            table.notes.append(f"--before tree: PYTHONPATH={before}")
        raw = Table(
            "bulk raw runs",
            ["what", "seconds", "cpu", "rss_mib"],
            [
                {"what": name, "seconds": r.seconds, "cpu": r.cpu, "rss_mib": r.rss_mib}
                for name, measured in runs.items()
                for r in measured
            ],
            printed=False,
        )
        return [table, raw]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _imports(
    dsn: str,
    rows: int,
    rounds: int,
    urlless: float,
    mine: Path,
    load: str,
    runs: dict[str, list[Run]],
    log: Any,
) -> int:
    """Steps 2-4: psql `\\copy FROM` against `tutorials import`; the number of rows stored."""
    psql_runs = runs.setdefault("psql import", [])
    our_runs = runs.setdefault("import", [])
    sums: set[tuple[int, str]] = set()
    for round_ in range(rounds):
        order = ("psql", "ours") if round_ % 2 == 0 else ("ours", "psql")
        for who in order:
            await empty(dsn)
            if who == "psql":
                psql_runs.append(_check(psql(dsn, load), "psql \\copy"))
            else:
                our_runs.append(_check(ours(dsn, "import", str(mine), "--quiet"), "import"))
            sums.add(await checksum(dsn))
            log(
                f"bulk: round {round_ + 1} {who}: "
                f"{(psql_runs if who == 'psql' else our_runs)[-1].seconds:.1f} s"
            )
    if len(sums) != 1:
        raise RuntimeError(f"psql and tutorials import left different tables: {sums}")
    (stored, _), *_ = sums
    if urlless == 0 and stored != rows:
        raise RuntimeError(f"{stored:,} rows stored, {rows:,} expected")
    runs["import again"] = [_check(ours(dsn, "import", str(mine), "--quiet"), "import again")]
    if await checksum(dsn) not in sums:
        raise RuntimeError("importing the same file again changed the table")
    return stored


async def _exports(
    dsn: str,
    rounds: int,
    directory: Path,
    before: Path | None,
    runs: dict[str, list[Run]],
    log: Any,
) -> None:
    """Step 5: psql `\\copy TO` against `tutorials export` (and the `--before` tree's)."""
    psql_csv = directory / "psql_out.csv"
    dump = (
        "\\copy (SELECT name, url, description, array_to_string(tags, ';') AS tags "
        f"FROM tutorials ORDER BY tutorial_id) TO '{psql_csv}' WITH (FORMAT csv, HEADER true)"
    )
    # The query our NDJSON export runs, through psql (checked byte for byte below): the
    # server's cost of making the JSON, which no CSV baseline has.
    psql_ndjson = directory / "psql_out.ndjson"
    json_dump = (
        "\\copy (SELECT '{\"name\":' || to_json(name) "
        "|| ',\"url\":' || coalesce(to_json(url)::text, 'null') "
        "|| ',\"description\":' || coalesce(to_json(description)::text, 'null') "
        "|| ',\"tags\":' || to_json(tags) || '}' FROM tutorials ORDER BY tutorial_id) "
        f"TO '{psql_ndjson}' WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
    )
    jobs: dict[str, Any] = {
        "psql export": lambda: psql(dsn, dump),
        "psql export ndjson": lambda: psql(dsn, json_dump),
        "export csv": lambda: ours(dsn, "export", str(directory / "ours.csv"), "--quiet"),
        "export ndjson": lambda: ours(dsn, "export", str(directory / "ours.ndjson"), "--quiet"),
        "export csv -j2": lambda: ours(
            dsn, "export", str(directory / "ours2.csv"), "--quiet", "--jobs", "2"
        ),
    }
    if before is not None:
        jobs["before csv"] = lambda: ours(
            dsn, "export", str(directory / "before.csv"), "--quiet", source=before
        )
        jobs["before ndjson"] = lambda: ours(
            dsn, "export", str(directory / "before.ndjson"), "--quiet", source=before
        )
    names = list(jobs)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            runs.setdefault(name, []).append(_check(jobs[name](), name))
            log(f"bulk: export round {round_ + 1} {name}: {runs[name][-1].seconds:.2f} s")
    expected = psql_csv.read_bytes()
    for name in ("ours.csv", "ours2.csv"):
        if (directory / name).read_bytes() != expected:
            raise RuntimeError(f"tutorials export ({name}) differs from psql \\copy's output")
    if (directory / "ours.ndjson").read_bytes() != psql_ndjson.read_bytes():
        raise RuntimeError("tutorials export (ndjson) differs from psql's run of its query")
    if before is not None:
        if (directory / "before.csv").read_bytes() != expected:
            raise RuntimeError("the --before tree's export (csv) differs from psql's output")
        if (directory / "before.ndjson").read_bytes() != (directory / "ours.ndjson").read_bytes():
            log("bulk: note: the NDJSON of the --before tree differs from ours")


async def run(ctx: Context) -> list[Table]:
    """The suite for `benchmarks.run`: 100,000 rows (short) or 1,000,000 (full)."""
    rows = 1_000_000 if ctx.mode.name == "full" else 100_000
    rounds = 2 if ctx.mode.name == "full" else 1
    async with ctx.scratch_database("bulk") as name:
        return await measure(ctx.dsn(name), rows, rounds, 0.0, ctx.log)


async def _main(args: argparse.Namespace) -> None:
    ctx = Context(mode=SHORT, admin_url=admin_url_from_env())
    before: Path | None = args.before

    async def go(name: str) -> list[Table]:
        return await measure(
            ctx.dsn(name),
            args.rows,
            args.rounds,
            args.urlless,
            ctx.log,
            export_only=args.export_only,
            before=before,
        )

    if args.database:
        await _ensure_database(ctx, args.database)
        tables = await go(args.database)
    else:
        async with ctx.scratch_database("bulk") as name:
            tables = await go(name)
    for table in tables:
        if table.printed:
            print(table.render(), end="\n\n", flush=True)


async def _ensure_database(ctx: Context, name: str) -> None:
    """`--database NAME`: create it if missing and bring it to the migrations' head; kept."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from benchmarks.core import admin_execute
    from tutorials.db.migrate import upgrade

    exists = await execute(
        ctx.dsn("postgres"), f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
    )
    if not exists[0]:
        await admin_execute(ctx.admin_url, f'CREATE DATABASE "{name}"')
    engine = create_async_engine(ctx.url(name), poolclass=NullPool)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bulk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--urlless", type=float, default=0.0, help="fraction of rows without url (0..1)"
    )
    parser.add_argument(
        "--export-only", action="store_true", help="only the exports (the table loaded once)"
    )
    parser.add_argument(
        "--database", help="use (and keep) this database; loaded only when its table is empty"
    )
    parser.add_argument(
        "--before", help="also export with PYTHONPATH=BEFORE (another source tree), paired"
    )
    arguments = parser.parse_args()
    if arguments.before:
        arguments.before = Path(arguments.before).resolve()
    asyncio.run(_main(arguments))
