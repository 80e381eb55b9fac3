"""`tutorials import` / `tutorials export`, end to end on a real database.

Beyond the library's rules (tests/test_transfer.py), what the command line adds: files and
stdin, the summary and exit codes, the errors file, progress that stays out of the way, one
clear line for usage errors, and the crash promise: an import killed with SIGKILL and run again
ends with exactly the table a clean run gives.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from tests.support import run_async
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.cli import transfer as cli_transfer

runner = CliRunner()

HEADER = "name,url,description,tags\n"


def invoke(*args: str, input: str | bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    async def fetch() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(dsn)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    return run_async(fetch)


def content(dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT name, url, description, tags, version FROM tutorials ORDER BY 1, 2")


def write_csv(path: Path, count: int, *, urlless_every: int = 0) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["name", "url", "description", "tags"])
        for i in range(count):
            url = "" if urlless_every and i % urlless_every == 0 else f"https://example.com/{i}"
            writer.writerow([f"Tutorial {i}", url, f'about "{i}", 2nd line\nhere', f"t{i % 5};all"])
    return path


BROKEN = (
    HEADER
    + "one,https://a.io/1,,x\n"
    + "two,ftp://a.io/2,,\n"
    + "three,https://a.io/3,,\n"
    + ",https://a.io/4,,\n"
    + "five,https://a.io/5,,\n"
)


#: Backends of other sessions on this test's database (the killed import's, until it is gone).
_IMPORT_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def test_import_a_file_then_again(database_env: URL, dsn: str, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "t.csv", 25)
    code, out, err = invoke("import", str(source))
    assert code == 0, err
    assert "inserted" in out and "25" in out
    assert len(content(dsn)) == 25
    code, out, _ = invoke("import", str(source), "--json")
    assert code == 0
    summary = json.loads(out)
    assert (summary["inserted"], summary["unchanged"], summary["rejected"]) == (0, 25, 0)


def test_import_from_stdin(database_env: URL, dsn: str) -> None:
    lines = "".join(
        json.dumps({"name": f"n{i}", "url": f"https://a.io/{i}"}) + "\n" for i in range(3)
    )
    code, out, err = invoke("import", "-", "--format", "ndjson", "--json", input=lines)
    assert code == 0, err
    assert json.loads(out)["inserted"] == 3
    assert [row[0] for row in content(dsn)] == ["n0", "n1", "n2"]


def test_quiet_prints_nothing(database_env: URL, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "t.csv", 5)
    code, out, err = invoke("import", str(source), "--quiet")
    assert (code, out, err) == (0, "", "")


def test_plain_progress_lines_when_not_a_terminal(
    database_env: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_transfer, "PLAIN_PROGRESS_EVERY", 0.0)
    source = write_csv(tmp_path / "t.csv", 30)
    code, _, err = invoke("import", str(source), "--batch-size", "10")
    assert code == 0
    progress = [line for line in err.splitlines() if line.startswith("imported ")]
    assert len(progress) == 3
    assert "rows/s" in progress[-1] and "100%" in progress[-1]
    code, _, err = invoke("import", str(source), "--batch-size", "10", "--quiet")
    assert (code, err) == (0, "")


def test_rejected_rows_exit_1_with_their_lines(database_env: URL, dsn: str, tmp_path: Path) -> None:
    source = tmp_path / "broken.csv"
    source.write_text(BROKEN)
    code, out, err = invoke("import", str(source))
    assert code == 1
    assert "line 3: url:" in err and "line 5: name:" in err
    assert "Traceback" not in out + err
    assert [row[0] for row in content(dsn)] == ["five", "one", "three"]


@pytest.mark.parametrize("suffix", [".ndjson", ".csv"])
def test_errors_file(database_env: URL, tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "broken.csv"
    source.write_text(BROKEN)
    errors = tmp_path / f"errors{suffix}"
    code, _, _ = invoke("import", str(source), "--errors", str(errors))
    assert code == 1
    if suffix == ".ndjson":
        rows = [json.loads(line) for line in errors.read_text().splitlines()]
        assert [row["line"] for row in rows] == [3, 5]
        assert rows[0]["text"] == "two,ftp://a.io/2,,"
        assert rows[1]["reason"].startswith("name:")
    else:
        rows = list(csv.DictReader(io.StringIO(errors.read_text())))
        assert [row["line"] for row in rows] == ["3", "5"]
        assert rows[0]["text"] == "two,ftp://a.io/2,,"


def test_max_errors_stops_the_run(database_env: URL, dsn: str, tmp_path: Path) -> None:
    source = tmp_path / "broken.csv"
    source.write_text(BROKEN)
    code, out, err = invoke("import", str(source), "--max-errors", "0", "--json")
    assert code == 1
    summary = json.loads(out)
    assert summary["stopped"] == "more than 0 rows rejected"
    assert "stopped:" in err
    assert [row[0] for row in content(dsn)] == ["one"]


def test_on_conflict_error_rejects_stored_urls(database_env: URL, dsn: str, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "t.csv", 4)
    assert invoke("import", str(source), "--quiet")[0] == 0
    code, out, _ = invoke("import", str(source), "--on-conflict", "error", "--json")
    assert code == 1
    assert json.loads(out)["rejected"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("import", "/nonexistent/file.csv"), "cannot read /nonexistent/file.csv"),
        (("import", "-"), "give --format"),
        (("import", "data.xml"), "cannot tell the format"),
        (("import", "-", "--format", "xml"), "unknown format 'xml'"),
        (("import", "-", "--format", "csv", "--on-conflict", "merge"), "--on-conflict"),
        (("export", "out.xml", "--format", "yaml"), "unknown format 'yaml'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    database_env: URL, args: tuple[str, ...], message: str
) -> None:
    code, out, err = invoke(*args, input="")
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_a_bad_csv_header_is_a_usage_error(database_env: URL, dsn: str) -> None:
    code, _, err = invoke("import", "-", "--format", "csv", input="title,url\nx,y\n")
    assert code == 2
    assert "unknown CSV column 'title'" in err
    assert content(dsn) == []


def test_export_then_import_round_trips(database_env: URL, dsn: str, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "t.csv", 40, urlless_every=7)
    assert invoke("import", str(source), "--quiet")[0] == 0
    before = content(dsn)
    for format in ("csv", "ndjson", "json"):
        target = tmp_path / f"out.{format}"
        code, _, err = invoke("export", str(target))
        assert code == 0, err
        assert "exported 40 rows" in err
        assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))
        query(dsn, "TRUNCATE tutorials")
        code, _, err = invoke("import", str(target), "--quiet")
        assert code == 0, err
        assert content(dsn) == before


def test_export_to_stdout_with_filters(database_env: URL, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "t.csv", 10)
    assert invoke("import", str(source), "--quiet")[0] == 0
    code, out, _ = invoke("export", "--tag", "T3", "--format", "ndjson", "--quiet")
    assert code == 0
    assert [json.loads(line)["name"] for line in out.splitlines()] == [
        "Tutorial 3",
        "Tutorial 8",
    ]
    code, out, _ = invoke("export", "--q", '"Tutorial 7"', "--quiet")
    assert code == 0
    assert out.splitlines()[0] == "name,url,description,tags"
    assert len(list(csv.reader(io.StringIO(out)))) == 2


def _import_process(source: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tutorials.cli import main; main()",
            "import",
            str(source),
            "--batch-size",
            "500",
            "--quiet",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TUTORIALS_AUTO_MIGRATE": "false"},
    )


def test_killed_import_run_again_gives_the_clean_table(
    database_env: URL, dsn: str, tmp_path: Path
) -> None:
    """SIGKILL after some batches committed; whole batches only; a rerun completes the table."""
    source = write_csv(tmp_path / "big.csv", 20_000, urlless_every=10)
    clean = _import_process(source)
    assert clean.wait(timeout=240) == 0, clean.stderr.read() if clean.stderr else ""
    expected = content(dsn)
    assert len(expected) == 20_000
    query(dsn, "TRUNCATE tutorials RESTART IDENTITY")

    process = _import_process(source)
    deadline = time.monotonic() + 120
    committed = 0
    while committed < 1000 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
        committed = query(dsn, "SELECT count(*) FROM tutorials")[0][0]
    assert process.poll() is None, "the import finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    # The server rolls the dead client's transaction back once it notices: wait (a poll with a
    # deadline, not a fixed sleep) until no backend of that import is left.
    gone_by = time.monotonic() + 30
    while query(dsn, _IMPORT_BACKENDS)[0][0] and time.monotonic() < gone_by:
        time.sleep(0.02)
    assert query(dsn, _IMPORT_BACKENDS)[0][0] == 0, "the killed import's backend is still there"
    after_kill = query(dsn, "SELECT count(*) FROM tutorials")[0][0]
    assert 0 < after_kill < 20_000
    assert after_kill % 500 == 0  # whole batches only

    rerun = _import_process(source, "--json")
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["unchanged"] == after_kill
    assert summary["inserted"] == 20_000 - after_kill
    assert content(dsn) == expected  # same rows, no duplicates, every version still 1


def test_invalid_utf8_goes_to_the_errors_file_as_it_came(
    database_env: URL, dsn: str, tmp_path: Path
) -> None:
    source = tmp_path / "latin1.csv"
    source.write_bytes(b"name,url\nok,https://a.io\ncaf\xe9,https://b.io\n")
    errors = tmp_path / "errors.csv"
    code, _, _ = invoke("import", str(source), "--errors", str(errors))
    assert code == 1
    assert b"caf\xe9,https://b.io" in errors.read_bytes()
    assert [row[0] for row in content(dsn)] == ["ok"]


def test_an_unreachable_database_is_exit_5_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tutorials.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    monkeypatch.setenv("TUTORIALS_AUTO_MIGRATE", "false")
    monkeypatch.setenv("TUTORIALS_CONNECT_TIMEOUT", "2")
    get_settings.cache_clear()
    try:
        source = write_csv(tmp_path / "t.csv", 3)
        code, _, err = invoke("import", str(source))
        assert code == 5
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
        code, _, err = invoke("export", str(tmp_path / "out.csv"))
        assert code == 5
        assert not (tmp_path / "out.csv").exists()
        assert not list(tmp_path.glob(".*.partial"))
    finally:
        get_settings.cache_clear()


def test_export_writes_through_devices_and_links(
    database_env: URL, dsn: str, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "t.csv", 5)
    assert invoke("import", str(source), "--quiet")[0] == 0
    if os.geteuid() == 0:
        device = tmp_path / "null"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert invoke("export", str(device), "--quiet")[0] == 0
        assert stat.S_ISCHR(device.lstat().st_mode)  # still the device, not a file
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert invoke("export", str(link), "--quiet")[0] == 0
    assert link.is_symlink() and real.read_text().startswith("name,url,description,tags")
    kept = tmp_path / "kept.csv"
    kept.write_text("old")
    kept.chmod(0o640)
    assert invoke("export", str(kept), "--quiet")[0] == 0
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert len(list(csv.reader(io.StringIO(kept.read_text())))) == 6
    assert not list(tmp_path.glob(".*.partial"))


# --- A file that breaks off -------------------------------------------------------------------


def test_a_quote_never_closed_is_reported_with_the_lines_not_read(
    database_env: URL, dsn: str, tmp_path: Path
) -> None:
    source = tmp_path / "broken.csv"
    source.write_text(
        HEADER + "one,https://a.io/1,,\n" + '"two,https://a.io/2,,\n' + "three\nfour\n"
    )
    code, out, err = invoke("import", str(source))
    assert code == 1
    assert out.splitlines()[:7] == [
        "inserted             1",
        "updated              0",
        "unchanged            0",
        "skipped              0",
        "duplicates           0",
        "rejected             1",
        "not read             2 lines",
    ]
    assert err.splitlines()[-1] == (
        "stopped: line 3: malformed CSV: a quoted field opened on this line is never closed; "
        "the 2 lines after it (4 to 5) were not read"
    )
    assert [row[0] for row in content(dsn)] == ["one"]
    query(dsn, "DELETE FROM tutorials")
    code, out, _ = invoke("import", str(source), "--json")
    assert (code, json.loads(out)["unread_lines"], json.loads(out)["inserted"]) == (1, 2, 1)


# --- Backup and restore -----------------------------------------------------------------------

EVERY_COLUMN = (
    "SELECT tutorial_id, name, url, description, tags, created_at, updated_at, version "
    "FROM tutorials ORDER BY tutorial_id"
)


def test_backup_then_restore_into_the_emptied_catalog(
    database_env: URL, dsn: str, tmp_path: Path
) -> None:
    for name in ("one", "two", "three"):
        assert invoke("add", name, "--url", f"https://a.io/{name}")[0] == 0
    assert invoke("update", "2", "--description", "changed")[0] == 0
    assert invoke("delete", "1")[0] == 0
    before = query(dsn, EVERY_COLUMN)
    backup = tmp_path / "catalog.backup"  # the extension says the format
    code, _, err = invoke("export", str(backup))
    assert (code, err) == (0, f"exported 2 rows to {backup} in 0.0 s\n")
    assert backup.read_text().splitlines()[0] == '{"tutorials_backup":1}'

    code, out, err = invoke("restore", str(backup))
    assert (code, out) == (4, "")
    assert err == (
        "error: the catalog is not empty (2 tutorials): a backup is restored into an empty "
        "catalog only (export a backup of this one, then `tutorials delete --all`)\n"
    )
    assert invoke("delete", "--all") == (0, "deleted 2 tutorials\n", "")
    assert invoke("restore", str(backup)) == (0, "restored 2 tutorials\n", "")
    assert query(dsn, EVERY_COLUMN) == before


def test_a_backup_is_restored_not_imported(database_env: URL, dsn: str, tmp_path: Path) -> None:
    backup = tmp_path / "catalog.backup"
    backup.write_text('{"tutorials_backup":1}\n')
    for args in (["import", str(backup)], ["import", "-", "--format", "backup"]):
        code, out, err = invoke(*args, input="")
        assert (code, out) == (2, ""), args
        assert err == "error: a backup is restored, not imported: `tutorials restore FILE`\n"
    code, _, err = invoke("restore", str(tmp_path / "missing.backup"))
    assert code == 2 and err.startswith("error: cannot read ")
