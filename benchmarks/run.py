"""One command for every benchmark: ``uv run python -m benchmarks.run --short|--full``.

Runs the suites in order (hot paths, scale, HTTP, bulk), each on scratch databases of its own
on the PostgreSQL named by ``BENCH_DATABASE_URL`` (default: the local server's ``postgres``
database as user ``postgres``), prints their tables as Markdown and writes everything, raw
samples included, to ``benchmarks/results/<name>.json``. Scratch databases are always dropped.

A suite is a module in this package with ``NAME`` and ``async def run(ctx) -> list[Table]``;
one that is missing (e.g. ``bulk`` before it is written) or cannot run here is reported as
skipped, never silently left out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.core import FULL, SHORT, Context, Table, admin_url_from_env, machine_info

#: Suite name -> module in this package, in the order they run.
SUITES = {
    "hotpaths": "hotpaths",
    "scale": "scale",
    "http": "httpbench",
    "bulk": "bulk",
    "startup": "startup",
    "migrations": "migrations",
    "cli": "cli",
    "first_start": "first_start",
}
RESULTS = Path(__file__).resolve().parent / "results"


class Skipped(Exception):
    """Raised by a suite that cannot run here (missing app, tool or module)."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", action="store_true", help="quick check (~4 minutes, default)")
    group.add_argument("--full", action="store_true", help="the record (~15 minutes)")
    parser.add_argument(
        "--suite",
        action="append",
        choices=list(SUITES),
        help="run only this suite (repeatable); default: all",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="hotpaths: only paths whose name has WORD; http: only those service variants",
    )
    parser.add_argument("--name", help="results file name (default: <mode>-<timestamp>)")
    parser.add_argument(
        "--uvloop", action="store_true", help="run the client on uvloop (default: asyncio)"
    )
    parser.add_argument(
        "--huge",
        action="store_true",
        help="scale: also 10,000,000 rows (~10 GB of disk, ~20 more minutes to seed)",
    )
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    mode = FULL if args.full else SHORT
    ctx = Context(mode=mode, admin_url=admin_url_from_env(), only=frozenset(args.only))
    if args.huge:
        ctx.extras["huge_sizes"] = (10_000_000,)
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "mode": mode.name,
        "started": started.isoformat(timespec="seconds"),
        "command": "uv run python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "machine": await machine_info(ctx.admin_url),
        "suites": {},
    }
    for name in args.suite or SUITES:
        clock = time.monotonic()
        entry: dict[str, Any]
        try:
            module = importlib.import_module(f"benchmarks.{SUITES[name]}")
            suite_run = getattr(module, "run", None)
            if suite_run is None:
                raise Skipped(f"benchmarks/{SUITES[name]}.py has no run(ctx)")
            tables: list[Table] = await suite_run(ctx)
            entry = {"status": "ok", "tables": [t.as_dict() for t in tables]}
            for table in (t for t in tables if t.printed):
                print(table.render(), end="\n\n", flush=True)
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.{SUITES[name]}":
                raise
            entry = {
                "status": "skipped",
                "reason": f"benchmarks/{SUITES[name]}.py does not exist yet",
            }
        except Skipped as exc:
            entry = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # one broken suite must not lose the others' results
            traceback.print_exc()
            entry = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = round(time.monotonic() - clock, 1)
        if entry["status"] != "ok":
            print(f"### {name}: {entry['status']} ({entry['reason']})\n", flush=True)
        report["suites"][name] = entry
        ctx.log(f"== {name}: {entry['status']} in {entry['seconds']}s")
    report["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.uvloop:
        import uvloop

        report = uvloop.run(_main(args))
    else:
        report = asyncio.run(_main(args))
    RESULTS.mkdir(exist_ok=True)
    name = args.name or f"{report['mode']}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    failed = [n for n, s in report["suites"].items() if s["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
