"""First start: from `git clone` to `/readyz` answering 200, as a newcomer does it.

Goal (issue 16): `./dev serve` on a fresh clone ready in <= 20 s on these 2-core machines, with
only the runtime dependencies installed.

    python3 benchmarks/first_start.py [--rounds 3] [--no-baseline]    # standalone, stdlib only
    ./dev python -m benchmarks.run --suite first_start                 # as a suite (network!)

Each round starts from nothing a newcomer would not have: a new temporary directory with a
fresh `HOME` (so no uv or pip cache: every package is downloaded), no `uv` on `PATH` (so
`./dev` installs it into `.tools/` with pip, as on a machine without it), no `DATABASE_URL` (so
the embedded PostgreSQL is set up: initdb, password, migrations) and `TUTORIALS_HOME` in the
temporary directory. Timed from before `git clone` (of this repository's committed `HEAD`,
from its local path: no network for the clone itself) until `GET /readyz` answers 200 (polled
every 50 ms), with the moments `./dev` says "installing uv" and "installing the locked
dependencies", and the server process's first line, to split the time.

The pairing, the same way a Python developer would do it by hand, in the same conditions and
alternating with ours: `git clone`, `python3 -m venv`, `pip install -r requirements.txt` of the
same locked runtime dependencies (exported from uv.lock before the rounds: a file a project
would ship), `pip install --no-deps -e .`, then `tutorials serve` to `/readyz`.

Every server is stopped (SIGTERM to its process group, then `tutorials db stop --force`) and
every directory removed, also on failure. As root the embedded server runs as `tutorials-pg`,
so the temporary directories are made under /tmp and chmod 0755.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME = "first_start"
GOAL_SECONDS = 20.0
POLL_SECONDS = 0.05
WAIT_SECONDS = 600.0
ROOT = Path(__file__).resolve().parent.parent
FIRST_LINE = "server's first line"


@dataclass
class Round:
    kind: str  # "dev" or "pip"
    total: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # seconds since the start
    error: str | None = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _without_uv(path: str) -> str:
    """PATH without the directories that hold a `uv` (a newcomer has none)."""
    kept = [entry for entry in path.split(os.pathsep) if not (Path(entry) / "uv").exists()]
    return os.pathsep.join(kept)


def _environment(base: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "VIRTUAL_ENV", "XDG_CACHE_HOME", "PIP_CACHE_DIR")
        and not key.startswith(("TUTORIALS_", "UV_"))
    }
    home = base / "home"
    home.mkdir()
    env["HOME"] = str(home)
    env["TUTORIALS_HOME"] = str(base / "data")
    env["PATH"] = _without_uv(env.get("PATH", ""))
    return env


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="tutorials-first-start-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _watch(process: subprocess.Popen[bytes], started: float, marks: dict[str, float]) -> None:
    """Stamp the moments `./dev` (and the server) say what they are doing."""
    assert process.stderr is not None
    for raw in process.stderr:
        line = raw.decode(errors="replace")
        now = time.monotonic() - started
        if "installing uv" in line:
            marks.setdefault("uv install started", now)
        elif "installing the locked dependencies" in line:
            marks.setdefault("dependencies install started", now)
        else:
            marks.setdefault(FIRST_LINE, now)


def _serving(port: int) -> bool:
    """Whether a `tutorials serve --port PORT` process runs (its Python, not `./dev` or uv)."""
    wanted = f"tutorials\0serve\0--port\0{port}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if wanted in cmdline and b"python" in cmdline.split(b"\0", 1)[0]:
                return True
    return False


def _stamp(result: Round, data: Path, port: int, started: float) -> None:
    """Marks seen from outside: the serve process running, initdb done, postgres started."""
    now = time.monotonic() - started
    marks = result.marks
    if "serve process running" not in marks and _serving(port):
        marks["serve process running"] = now
    if "initdb done" not in marks and (data / "PG_VERSION").exists():
        marks["initdb done"] = now
    if "postgres started" not in marks and (data / "postmaster.pid").exists():
        marks["postgres started"] = now


def _serve_until_ready(
    argv: list[str], cwd: Path, env: dict[str, str], port: int, started: float, result: Round
) -> None:
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    watcher = threading.Thread(target=_watch, args=(process, started, result.marks), daemon=True)
    watcher.start()
    try:
        data = Path(env["TUTORIALS_HOME"]) / "data"
        while not _ready(port):
            _stamp(result, data, port, started)
            if process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode} before /readyz")
            if time.monotonic() - started > WAIT_SECONDS:
                raise TimeoutError("no /readyz within the wait")
            time.sleep(POLL_SECONDS)
        result.total = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _stop_embedded(tutorials: Path, env: dict[str, str]) -> None:
    if tutorials.exists():
        subprocess.run(
            [str(tutorials), "db", "stop", "--force"], env=env, capture_output=True, check=False
        )


def dev_round(source: Path) -> Round:
    """`git clone`, then `./dev serve`, to /readyz."""
    result = Round("dev")
    with _scratch() as base:
        env = _environment(base)
        clone = base / "clone"
        port = _free_port()
        started = time.monotonic()
        try:
            subprocess.run(["git", "clone", "-q", str(source), str(clone)], env=env, check=True)
            result.marks["cloned"] = time.monotonic() - started
            argv = [str(clone / "dev"), "serve", "--port", str(port)]
            _serve_until_ready(argv, base, env, port, started, result)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            _stop_embedded(clone / ".venv" / "bin" / "tutorials", env)
    return result


def pip_round(source: Path, requirements: Path) -> Round:
    """`git clone`, `python3 -m venv`, `pip install` of the same locked dependencies, then
    `tutorials serve`, to /readyz."""
    result = Round("pip")
    with _scratch() as base:
        env = _environment(base)
        clone = base / "clone"
        venv = base / "venv"
        port = _free_port()
        started = time.monotonic()
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        pip += ["--disable-pip-version-check"]
        try:
            subprocess.run(["git", "clone", "-q", str(source), str(clone)], env=env, check=True)
            result.marks["cloned"] = time.monotonic() - started
            python = shutil.which("python3", path=env["PATH"]) or sys.executable
            subprocess.run([python, "-m", "venv", str(venv)], env=env, check=True)
            result.marks["venv made"] = time.monotonic() - started
            subprocess.run([*pip, "-r", str(requirements)], env=env, check=True)
            subprocess.run([*pip, "--no-deps", "-e", str(clone)], env=env, check=True)
            result.marks["dependencies installed"] = time.monotonic() - started
            argv = [str(venv / "bin" / "tutorials"), "serve", "--port", str(port)]
            _serve_until_ready(argv, clone, env, port, started, result)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            _stop_embedded(venv / "bin" / "tutorials", env)
    return result


def export_requirements(source: Path, into: Path) -> Path:
    """The locked runtime dependencies as a pip requirements file (uv's export of uv.lock)."""
    uv = shutil.which("uv") or str(source / ".tools" / "bin" / "uv")
    target = into / "requirements.txt"
    subprocess.run(
        [
            uv,
            "export",
            "--project",
            str(source),
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-project",
            "--no-header",
            "--quiet",
            "-o",
            str(target),
        ],
        check=True,
    )
    return target


def measure(rounds: int, baseline: bool, log: Any = print) -> list[Round]:
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="tutorials-first-start-req-") as scratch:
        requirements = export_requirements(ROOT, Path(scratch)) if baseline else None
        for index in range(rounds):
            order = ["dev", "pip"] if index % 2 == 0 else ["pip", "dev"]
            for kind in order:
                if kind == "pip" and requirements is None:
                    continue
                log(f"first start: round {index + 1}/{rounds}, {kind}")
                done = dev_round(ROOT) if kind == "dev" else pip_round(ROOT, requirements)  # type: ignore[arg-type]
                log(f"  {done.total:.1f} s {done.marks} {done.error or ''}")
                results.append(done)
    return results


def summary(results: list[Round]) -> dict[str, Any]:
    report: dict[str, Any] = {"rounds": [vars(r) for r in results]}
    for kind in ("dev", "pip"):
        good = [r.total for r in results if r.kind == kind and r.error is None]
        if good:
            report[f"{kind}_median_s"] = round(statistics.median(good), 1)
            report[f"{kind}_max_s"] = round(max(good), 1)
    if "dev_median_s" in report:
        report["verdict"] = "met" if report["dev_max_s"] <= GOAL_SECONDS else "missed"
    dev = [r for r in results if r.kind == "dev" and r.error is None]
    pip = [r for r in results if r.kind == "pip" and r.error is None]
    if dev and pip:
        pairs = [d.total / p.total for d, p in zip(dev, pip, strict=False)]
        report["paired_ratio_dev_over_pip"] = round(statistics.median(pairs), 2)
    return report


MARKS = (
    "cloned",
    "uv install started",
    "dependencies install started",
    "venv made",
    "dependencies installed",
    "serve process running",
    "initdb done",
    "postgres started",
    FIRST_LINE,
)


def render(report: dict[str, Any]) -> str:
    lines = [
        "### First start: git clone to /readyz (benchmarks/first_start.py)",
        "",
        "Seconds since the start, for the total and for the moment each step was seen "
        "(`./dev`'s own lines, the serve process appearing, the data directory's files).",
        "",
        "| round | path | ready | " + " | ".join(MARKS) + " |",
        "|---|---|---|" + "---|" * len(MARKS),
    ]
    for number, found in enumerate(report["rounds"], start=1):
        marks = found["marks"]
        cells = [f"{marks[name]:.1f}" if name in marks else "" for name in MARKS]
        total = f"{found['total']:.1f}" + (f" ({found['error']})" if found["error"] else "")
        path = "./dev serve" if found["kind"] == "dev" else "venv + pip"
        lines.append(f"| {number} | {path} | {total} | " + " | ".join(cells) + " |")
    lines.append("")
    if "dev_median_s" in report:
        lines.append(
            f"- `./dev serve`: median {report['dev_median_s']} s, max {report['dev_max_s']} s "
            f"(goal <= {GOAL_SECONDS:g} s: {report['verdict']})"
        )
    if "pip_median_s" in report:
        lines.append(
            f"- venv + pip install + serve: median {report['pip_median_s']} s, max "
            f"{report['pip_max_s']} s; paired ratio ./dev / pip: "
            f"{report.get('paired_ratio_dev_over_pip', '')}"
        )
    return "\n".join(lines)


async def run(ctx: Any) -> list[Any]:
    """The suite for `benchmarks.run`: one round each in short mode, three in full."""
    import asyncio

    from benchmarks.core import Table

    rounds = 1 if ctx.mode.name == "short" else 3
    report = summary(await asyncio.to_thread(measure, rounds, True, ctx.log))
    rows = [
        {
            "path": "./dev serve" if found["kind"] == "dev" else "venv + pip",
            "seconds": found["total"],
            "error": found["error"],
            **{key: round(value, 1) for key, value in found["marks"].items()},
        }
        for found in report["rounds"]
    ]
    notes = [line.removeprefix("- ") for line in render(report).splitlines() if line[:2] == "- "]
    return [
        Table(
            "First start: git clone to /readyz", ["path", "seconds", *MARKS, "error"], rows, notes
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/first_start.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="only ./dev serve")
    args = parser.parse_args(argv)
    results = measure(args.rounds, not args.no_baseline, lambda m: print(m, file=sys.stderr))
    print(render(summary(results)))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
