"""Start-up: how long `tutorials serve` takes to answer `GET /readyz` with 200.

The goal: `tutorials serve` answers `/readyz` within 3 s on an existing embedded data dir.
Every case starts real processes with no `DATABASE_URL` (so the embedded PostgreSQL is used)
and `TUTORIALS_HOME` in a temporary directory, and polls `/readyz` on loopback every 20 ms
from the moment the process is spawned until it answers 200 (each wait bounded by 60 s):

a) first start ever: initdb + start + migrate, on a new home;
b) restart on the existing data dir with the embedded server stopped (`tutorials db stop`
   first): the goal's figure, p50 / max over rounds and a verdict against 3 s;
c) start while the embedded server still runs (it is adopted);
d) for context, on the system PostgreSQL (`BENCH_DATABASE_URL`, a migrated scratch database):
   the tuned bare app (`python -m benchmarks.bare_app`, the HTTP suite's limit) and `tutorials
   serve` with `DATABASE_URL` (no embedded server). The bare app is the floor for a Python web
   process; serve-with-URL minus bare is our imports and app build; (b) minus serve-with-URL
   is the embedded server's start.

Where the time of (b) and (c) goes is measured by running the same command with timing
wrappers around the steps `serve` takes (`PROBE` below: the real `tutorials.cli.main`, with
`EmbeddedPostgres.start`, `aresolve_url`, `upgrade`, the CLI's `_serve`, `open_database`,
`create_app` and uvicorn's `Server.startup` wrapped to stamp `time.monotonic()`, a clock
shared by all processes on Linux). A step that no longer exists just leaves its row empty.

Bytecode: this machine's environment may set `PYTHONDONTWRITEBYTECODE=1` over a venv holding
few `.pyc` files, so every process compiles its imports from source again (seconds). An
installed service has its bytecode, so the measured processes get a bytecode cache of their
own (`PYTHONPYCACHEPREFIX` in the temporary directory, filled by an untimed warm-up); one
extra run of (b) per invocation shows the environment as inherited, for the record.

Every round uses a home of its own, and every server process and embedded server is stopped,
and the temporary directory removed, also on failure. As root the embedded server runs as
`tutorials-pg`, so the temporary directory is made under /tmp and chmod 0755, as the tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.core import Context, Table, free_port, http_status, median, process_cpu

NAME = "startup"
GOAL_SECONDS = 3.0
POLL_SECONDS = 0.02
WAIT_SECONDS = 60.0
ROOT = Path(__file__).resolve().parent.parent

#: `tutorials serve` with timing wrappers around its steps (run with `python -c`). Stamps are
#: appended to $BENCH_STARTUP_STAMPS as "name monotonic-seconds" lines as they happen; a name
#: seen twice keeps its first time. Nothing is imported ahead of the command: what is not yet
#: imported when the CLI is (the API, uvicorn) is wrapped when `serve` has imported it.
PROBE = r"""
import os, time
_stamps = open(os.environ["BENCH_STARTUP_STAMPS"], "a", buffering=1)
def stamp(name):
    _stamps.write(f"{name} {time.monotonic():.6f}\n")
stamp("probe_start")
import tutorials.cli
stamp("cli_imported")
import functools, sys
import tutorials.cli.serve, tutorials.db.embedded, tutorials.db.migrate, tutorials.db.session

def wrap(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:
        return
    @functools.wraps(original)
    async def timed(*args, **kwargs):
        stamp(label + "_begin")
        try:
            return await original(*args, **kwargs)
        finally:
            stamp(label + "_end")
    setattr(owner, name, timed)

def wrap_sync(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:
        return
    @functools.wraps(original)
    def timed(*args, **kwargs):
        stamp(label + "_begin")
        try:
            return original(*args, **kwargs)
        finally:
            stamp(label + "_end")
    setattr(owner, name, timed)

wrap_sync(tutorials.db.embedded.EmbeddedPostgres, "start", "embedded")
wrap(tutorials.db.session, "aresolve_url", "resolve")
wrap(tutorials.db.migrate, "upgrade", "migrate")
_serve = getattr(tutorials.cli.serve, "_serve", None)
if _serve is not None:
    @functools.wraps(_serve)
    async def serve_timed(*args, **kwargs):
        stamp("serve_begin")
        import tutorials.api.app, uvicorn
        wrap(tutorials.api.app, "open_database", "open")
        wrap_sync(tutorials.api.app, "create_app", "app")
        wrap(uvicorn.Server, "startup", "bind")
        return await _serve(*args, **kwargs)
    tutorials.cli.serve._serve = serve_timed
sys.argv = ["tutorials", *sys.argv[1:]]
tutorials.cli.main()
"""

#: Pieces of the probe's timeline: (label, from stamp, to stamp). "spawn" is the parent's
#: clock just before the process was started; "ready" when /readyz first answered 200.
PIECES = (
    ("interpreter start", "spawn", "probe_start"),
    ("import tutorials (package + CLI)", "probe_start", "cli_imported"),
    ("import the API; argv, settings, logging", "cli_imported", "serve_begin"),
    ("embedded server: start/adopt + db check (1st call)*", "embedded_begin", "embedded_end"),
    ("import uvicorn; wait for an early embedded start", "serve_begin", "open_begin"),
    ("open: embedded server URL", "resolve_begin", "resolve_end"),
    ("open: Database + SQLAlchemy engine for migrations", "resolve_end", "migrate_begin"),
    ("open: migration to head (a no-op here)", "migrate_begin", "migrate_end"),
    ("open: schema check", "migrate_end", "open_end"),
    ("app build (create_app)", "app_begin", "app_end"),
    ("uvicorn: lifespan + bind", "bind_begin", "bind_end"),
    ("first /readyz answered 200", "bind_end", "ready"),
    ("total: spawn to /readyz 200", "spawn", "ready"),
)


@dataclass
class Start:
    """One measured start: seconds from spawn to the first 200, and the process's CPU then."""

    seconds: float
    cpu_seconds: float  # the serve process itself (user + system)
    children_cpu_seconds: float  # children it waited for (runuser, pg_ctl, psql, ...)
    stamps: dict[str, float] = field(default_factory=dict)


class Bench:
    """The temporary directory, the environments and the processes of one suite run."""

    def __init__(self, ctx: Context, base: Path, admin_dsn_for: str) -> None:
        self.ctx = ctx
        self.base = base
        self.logs = base / "logs"
        self.logs.mkdir()
        self.homes: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.system_dsn = admin_dsn_for
        inherited = {
            k: v
            for k, v in os.environ.items()
            if k != "DATABASE_URL" and not k.startswith(("TUTORIALS_", "PG"))
        }
        self.inherited_env = inherited
        cached = {k: v for k, v in inherited.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
        self.env = cached
        scripts = Path(sys.executable).parent
        console = scripts / "tutorials"
        self.tutorials = (
            [str(console)]
            if console.exists()
            else [sys.executable, "-c", "from tutorials.cli import main; main()"]
        )
        self.counter = 0

    def new_home(self) -> Path:
        home = self.base / f"home{len(self.homes)}"
        self.homes.append(home)
        return home

    def embedded_env(self, home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
        return {**(env or self.env), "TUTORIALS_HOME": str(home)}

    async def run_command(self, argv: list[str], env: dict[str, str]) -> float:
        """Run a command to completion (bounded); its duration in seconds."""
        started = time.monotonic()
        result = await asyncio.to_thread(
            subprocess.run,
            argv,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
        return time.monotonic() - started

    async def db_stop(self, home: Path) -> float:
        return await self.run_command([*self.tutorials, "db", "stop"], self.embedded_env(home))

    async def start(
        self, label: str, argv: list[str], env: dict[str, str], *, probe: bool = False
    ) -> Start:
        """Spawn a server, poll /readyz until 200 (bounded), stop it; the time it took."""
        self.counter += 1
        port = free_port()
        argv = [arg.replace("{port}", str(port)) for arg in argv]
        stamps_path = self.logs / f"{self.counter:03d}-{label}.stamps"
        log_path = self.logs / f"{self.counter:03d}-{label}.log"
        env = {**env, "BENCH_STARTUP_STAMPS": str(stamps_path)} if probe else env
        with log_path.open("wb") as log:
            spawn = time.monotonic()
            process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        try:
            deadline = spawn + WAIT_SECONDS
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{label}: exited {process.returncode} early: {tail}")
                if await http_status(port, "/readyz") == 200:
                    ready = time.monotonic()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: /readyz not 200 within {WAIT_SECONDS:.0f} s")
                await asyncio.sleep(POLL_SECONDS)
            own, children = process_cpu(process.pid)
        finally:
            await self.stop_process(process)
        stamps: dict[str, float] = {}
        if probe:
            for line in stamps_path.read_text().splitlines():
                name, _, value = line.partition(" ")
                stamps.setdefault(name, float(value))
            stamps["spawn"], stamps["ready"] = spawn, ready
        return Start(ready - spawn, own, children, stamps)

    async def stop_process(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        with contextlib.suppress(ValueError):
            self.processes.remove(process)

    def serve_argv(self) -> list[str]:
        return [*self.tutorials, "serve", "--port", "{port}"]

    def probe_argv(self) -> list[str]:
        return [sys.executable, "-c", PROBE, "serve", "--port", "{port}"]

    def bare_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "benchmarks.bare_app",
            "--dsn",
            self.system_dsn,
            "--port",
            "{port}",
            "--pool-size",
            "1",
        ]

    def url_env(self) -> dict[str, str]:
        return {**self.env, "DATABASE_URL": self.system_dsn}

    def bare_env(self) -> dict[str, str]:
        return {**self.env, "PYTHONPATH": str(ROOT)}

    async def cleanup(self) -> None:
        """Stop every process and embedded server we started; remove the directory."""
        for process in list(self.processes):
            with contextlib.suppress(Exception):
                await self.stop_process(process)
        from tutorials.db.embedded import EmbeddedPostgres

        for home in self.homes:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(EmbeddedPostgres(home).stop)
        shutil.rmtree(self.base, ignore_errors=True)


async def run(ctx: Context) -> list[Table]:
    rounds = 3 if ctx.mode.name == "short" else 5
    base = Path(tempfile.mkdtemp(prefix="tutorials-bench-startup-", dir="/tmp"))
    os.chmod(base, 0o755)  # the embedded server's user (as root: tutorials-pg) must traverse it
    samples: dict[str, list[Start]] = {}
    load_before = os.getloadavg()[0]
    try:
        async with ctx.scratch_database("startup") as database:
            bench = Bench(ctx, base, ctx.dsn(database))
            try:
                await _measure(bench, rounds, samples)
            finally:
                await bench.cleanup()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    tables = _tables(samples, rounds)
    tables[0].notes.append(
        f"machine load (1-min load average, {os.cpu_count()} CPUs): {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; wall times move with it, CPU seconds much less"
    )
    return tables


CASES = (
    ("first", "a) first start ever: initdb + start + migrate"),
    ("restart", "b) restart, embedded server stopped (the goal)"),
    ("adopt", "c) start, embedded server still running (adopted)"),
    ("bare", "d) bare app (tuned HTTP limit), system PostgreSQL"),
    ("url", "d) tutorials serve, DATABASE_URL on the system PostgreSQL"),
    ("restart_nocache", "b) as this environment runs it: no bytecode cache (1 run)"),
)


async def _measure(bench: Bench, rounds: int, samples: dict[str, list[Start]]) -> None:
    def keep(key: str, start: Start) -> None:
        samples.setdefault(key, []).append(start)

    # Untimed warm-up: fills the bytecode cache of every path measured (and the page cache).
    await bench.start("warmup-url", bench.serve_argv(), bench.url_env())
    await bench.start("warmup-bare", bench.bare_argv(), bench.bare_env())
    warm_home = bench.new_home()
    await bench.start("warmup-probe", bench.probe_argv(), bench.embedded_env(warm_home), probe=True)
    await bench.db_stop(warm_home)

    for index in range(rounds):
        home = bench.new_home()
        env = bench.embedded_env(home)
        keep("first", await bench.start("first", bench.serve_argv(), env))
        await bench.db_stop(home)
        keep("restart", await bench.start("restart", bench.serve_argv(), env))
        keep("adopt", await bench.start("adopt", bench.serve_argv(), env))
        keep("adopt_probe", await bench.start("adopt-probe", bench.probe_argv(), env, probe=True))
        await bench.db_stop(home)
        keep(
            "restart_probe",
            await bench.start("restart-probe", bench.probe_argv(), env, probe=True),
        )
        await bench.db_stop(home)
        context = [
            ("bare", bench.bare_argv(), bench.bare_env()),
            ("url", bench.serve_argv(), bench.url_env()),
        ]
        for key, argv, context_env in context if index % 2 == 0 else context[::-1]:
            keep(key, await bench.start(key, argv, context_env))
        if index == 0:
            inherited = bench.embedded_env(home, bench.inherited_env)
            keep("restart_nocache", await bench.start("nocache", bench.serve_argv(), inherited))
            await bench.db_stop(home)
        bench.ctx.log(
            f"startup: round {index + 1}/{rounds}: restart "
            f"{samples['restart'][-1].seconds:.2f} s, adopted {samples['adopt'][-1].seconds:.2f} s"
        )


def _verdict(p50: float, worst: float) -> str:
    if worst <= GOAL_SECONDS:
        return f"holds: p50 {p50:.2f} s and max {worst:.2f} s are within {GOAL_SECONDS:g} s"
    if p50 <= GOAL_SECONDS:
        return f"holds at p50 ({p50:.2f} s) but not at max ({worst:.2f} s > {GOAL_SECONDS:g} s)"
    return f"does not hold: p50 {p50:.2f} s > {GOAL_SECONDS:g} s"


def _tables(samples: dict[str, list[Start]], rounds: int) -> list[Table]:
    times = Table(
        f"Start-up: spawn to first /readyz 200 ({rounds} rounds; seconds)",
        ["case", "p50 s", "max s", "min s", "serve CPU s", "children CPU s", "runs"],
    )
    for key, label in CASES:
        runs = samples.get(key, [])
        if not runs:
            continue
        times.rows.append(
            {
                "case": label,
                "p50 s": median([s.seconds for s in runs]),
                "max s": max(s.seconds for s in runs),
                "min s": min(s.seconds for s in runs),
                "serve CPU s": median([s.cpu_seconds for s in runs]),
                "children CPU s": median([s.children_cpu_seconds for s in runs]),
                "runs": len(runs),
            }
        )
    restart = [s.seconds for s in samples.get("restart", [])]
    if restart:
        times.notes.append(
            f"goal (b) within {GOAL_SECONDS:g} s: {_verdict(median(restart), max(restart))}"
        )
    figures = {k: median([s.seconds for s in v]) for k, v in samples.items() if v}
    if {"bare", "url", "restart", "adopt"} <= figures.keys():
        times.notes.append(
            f"ours on top of the bare baseline (serve with DATABASE_URL - bare): "
            f"{figures['url'] - figures['bare']:.2f} s; the embedded server's share of (b) "
            f"((b) - serve with DATABASE_URL): {figures['restart'] - figures['url']:.2f} s; "
            f"of (c): {figures['adopt'] - figures['url']:.2f} s"
        )
    times.notes.append(
        f"/readyz polled every {POLL_SECONDS * 1000:.0f} ms on loopback from the spawn; CPU: "
        "the serve process's own user+system time when it first answered 200, and that of "
        "the children it waited for (runuser, pg_ctl, psql; not the postmaster); a bytecode "
        "cache of their own (PYTHONPYCACHEPREFIX, warmed up untimed) except the last row"
    )

    pieces = Table(
        "Start-up: where the time goes (probe runs, median ms over rounds)",
        ["piece", "b) restart ms", "c) adopted ms"],
    )
    for label, begin, end in PIECES:
        row: dict[str, Any] = {"piece": label}
        for key, column in (("restart_probe", "b) restart ms"), ("adopt_probe", "c) adopted ms")):
            spans = [
                1000 * (s.stamps[end] - s.stamps[begin])
                for s in samples.get(key, [])
                if begin in s.stamps and end in s.stamps
            ]
            row[column] = median(spans) if spans else None
        pieces.rows.append(row)
    pieces.notes.append(
        "the same `tutorials serve`, with its steps wrapped to stamp a clock shared by all "
        "processes (see PROBE in benchmarks/startup.py); pieces in the order they begin"
    )
    pieces.notes.append(
        "* the first EmbeddedPostgres.start() of the process: where serve starts the embedded "
        "server early, in a thread, it overlaps the API import above and `open` only adopts it"
    )
    raw = Table(
        "Start-up: every sample",
        ["case", "seconds", "cpu_seconds", "children_cpu_seconds", "stamps"],
        [
            {
                "case": key,
                "seconds": s.seconds,
                "cpu_seconds": s.cpu_seconds,
                "children_cpu_seconds": s.children_cpu_seconds,
                "stamps": s.stamps,
            }
            for key, runs in samples.items()
            for s in runs
        ],
        printed=False,
    )
    return [times, pieces, raw]
