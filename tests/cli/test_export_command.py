"""`tutorials export` as a user runs it: parallel streams, write errors, what it imports.

The command's other promises (round trips, filters, devices, links, modes, exit 5) are in
test_transfer_commands.py; the bytes themselves in tests/transfer/test_export_copy.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import IO

import asyncpg
import pytest
from sqlalchemy.engine import URL
from tests.support import run_async
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.transfer import exporter

runner = CliRunner()

ROWS = [
    ('Commas, "quotes" and\nnewlines', "https://example.com/1", "x\r\ny", ["csv", "a;b"]),
    ("Unicode: café ☕ 日本語", "https://例え.jp/パス", "", []),
    ("no url", None, None, ["plain"]),
    ("Backslash \\ and tab\t", "https://example.com/\\x", "\\.", ["a\\b"]),
] + [(f"row {i}", f"https://example.com/r/{i}", f"about {i}", [f"n{i % 3}"]) for i in range(300)]


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def store(dsn: str) -> None:
    async def insert() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.executemany(
                "INSERT INTO tutorials (name, url, description, tags) VALUES ($1, $2, $3, $4)",
                ROWS,
            )
        finally:
            await connection.close()

    run_async(insert)


def cli(
    *args: str, stdout: IO[bytes] | int = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """The command in its own process, as a user runs it (the test's DATABASE_URL)."""
    return subprocess.run(
        [sys.executable, "-c", "from tutorials.cli import main; main()", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("format", ["csv", "ndjson", "json"])
def test_jobs_give_the_same_file(
    database_env: URL, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    store(dsn)
    monkeypatch.setattr(exporter, "PARALLEL_MIN_ROWS", 1)  # split even this small table
    one, two = tmp_path / f"one.{format}", tmp_path / f"two.{format}"
    assert invoke("export", str(one), "--jobs", "1", "--quiet")[0] == 0
    code, _, err = invoke("export", str(two), "-j", "2")
    assert code == 0, err
    assert f"exported {len(ROWS)} rows" in err
    assert two.read_bytes() == one.read_bytes()
    assert sorted(os.listdir(tmp_path)) == [one.name, two.name]  # no partial or spill files


def test_standard_output_gets_the_same_bytes_as_a_file(
    database_env: URL, dsn: str, tmp_path: Path
) -> None:
    store(dsn)
    target = tmp_path / "out.csv"
    assert invoke("export", str(target), "--quiet")[0] == 0
    process = cli("export", "-", "--quiet")
    assert process.returncode == 0, process.stderr
    assert process.stdout == target.read_bytes()
    assert process.stdout.startswith(b"name,url,description,tags\n")
    process = cli("export", "-", "--format", "ndjson", "--tag", "n1", "--quiet")
    assert process.returncode == 0, process.stderr
    names = [json.loads(line)["name"] for line in process.stdout.splitlines()]
    assert names == [f"row {i}" for i in range(300) if i % 3 == 1]


def test_jobs_must_be_at_least_one(database_env: URL, tmp_path: Path) -> None:
    code, _, err = invoke("export", str(tmp_path / "out.csv"), "--jobs", "0")
    assert code == 2
    assert "--jobs" in err
    assert not list(tmp_path.iterdir())


def test_a_full_disk_is_a_write_error_not_the_database(
    database_env: URL, dsn: str, tmp_path: Path
) -> None:
    """Exit 1 with one line naming the file, not exit 5 "cannot reach the database"."""
    store(dsn)
    if os.geteuid() == 0:
        full = tmp_path / "full"
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # what /dev/full is
    elif Path("/dev/full").exists():
        full = Path("/dev/full")
    else:  # pragma: no cover - not Linux
        pytest.skip("no /dev/full here")
    code, _, err = invoke("export", str(full))
    assert code == 1
    assert err.strip() == f"error: cannot write {full}: No space left on device"
    with full.open("wb") as device:
        process = cli("export", "-", stdout=device)
    assert process.returncode == 1
    assert process.stderr.decode().strip() == (
        "error: cannot write to standard output: No space left on device"
    )


def test_a_closed_pipe_ends_the_export_quietly(database_env: URL, dsn: str) -> None:
    store(dsn)
    script = "from tutorials.cli import main; main()"
    with subprocess.Popen(
        [sys.executable, "-c", script, "export", "-", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.read(10) == b"name,url,d"
        process.stdout.close()  # the reader goes away, as `| head -c 10` does
        assert process.wait(timeout=60) == 0
        assert process.stderr.read() == b""


def test_export_imports_neither_the_server_nor_alembic(database_env: URL, tmp_path: Path) -> None:
    """Start-up is most of a small export: what only other commands need stays unimported.

    (Rich's own console imports its tables before rich 15: those are not ours to avoid.)
    """
    probe = (
        "import atexit, sys\n"
        "import rich.console\n"
        "already = set(sys.modules)\n"
        "heavy = ('alembic', 'mako', 'uvicorn', 'fastapi', 'starlette', 'rich.progress',"
        " 'rich.table')\n"
        "atexit.register(lambda: print(sorted(m for m in heavy"
        " if m in sys.modules and m not in already), file=sys.stderr))\n"
        "from tutorials.cli import main\n"
        "main()\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", probe, "export", str(tmp_path / "out.csv"), "--quiet"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert process.stderr.decode().strip() == "[]"
