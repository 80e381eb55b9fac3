"""The catalog commands, end to end on a real database: tables for people, JSON for machines,
one clear line and a non-zero exit for anything wrong."""

from __future__ import annotations

import json

import asyncpg
import pytest
from sqlalchemy.engine import URL
from tests.support import run_async
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.cli._app import EXIT_CONFLICT, EXIT_INVALID, EXIT_NOT_FOUND

runner = CliRunner()


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def add_json(*args: str) -> dict[str, object]:
    code, out, err = invoke("add", *args, "--json")
    assert code == 0, err
    return dict(json.loads(out))


def count_rows(dsn: str) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM tutorials"))
        finally:
            await connection.close()

    return run_async(count)


def test_help_lists_every_command() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for command in ("add", "get", "list", "search", "update", "delete", "db"):
        assert command in out


def test_add_get_update_delete_round_trip(database_env: URL, dsn: str) -> None:
    saved = add_json("Async SQLAlchemy", "--url", "https://a.io", "--tag", "Python", "--tag", "sql")
    assert set(saved) == {
        "tutorial_id",
        "name",
        "url",
        "description",
        "tags",
        "created_at",
        "updated_at",
        "version",
    }
    assert saved["tags"] == ["python", "sql"]
    key = str(saved["tutorial_id"])

    code, out, _ = invoke("get", key)
    assert code == 0
    assert "Async SQLAlchemy" in out

    code, out, err = invoke(
        "update", key, "--description", "in depth", "--if-version", "1", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["version"] == 2

    code, _, err = invoke("update", key, "--name", "stale", "--if-version", "1")
    assert code == EXIT_CONFLICT
    assert "version 2" in err

    code, out, _ = invoke("delete", key)
    assert code == 0
    assert count_rows(dsn) == 0
    code, _, err = invoke("delete", key)
    assert code == EXIT_NOT_FOUND
    assert err.strip() == f"error: tutorial {key} not found"


def test_list_and_search(database_env: URL) -> None:
    add_json("PostgreSQL indexes", "--tag", "db")
    add_json("Gardening", "--tag", "outdoors")
    code, out, _ = invoke("list", "--tag", "db", "--json")
    assert code == 0
    page = json.loads(out)
    assert [item["name"] for item in page["items"]] == ["PostgreSQL indexes"]
    assert page["next_cursor"] is None

    code, out, _ = invoke("list", "--limit", "1", "--json")
    first = json.loads(out)
    assert first["next_cursor"]
    code, out, _ = invoke("list", "--limit", "1", "--cursor", first["next_cursor"], "--json")
    assert [i["name"] for i in json.loads(out)["items"]] == ["Gardening"]

    code, out, _ = invoke("search", "index")
    assert code == 0
    assert "PostgreSQL indexes" in out
    assert "Gardening" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["add", "   "],
        ["add", "ok", "--url", "ftp://nope"],
        ["add", "nul\x00byte"],
        ["add", "x" * 256],
        ["get", "abc"],
        ["get", "0"],
        ["get", "--", "-1"],
        ["get", str(2**63)],
        ["list", "--limit", "0"],
        ["list", "--limit", "101"],
        ["list", "--cursor", "forged"],
        ["search", ""],
        ["list", "--tag", "a;b"],
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    database_env: URL, dsn: str, args: list[str]
) -> None:
    code, out, err = invoke(*args)
    assert code == EXIT_INVALID, (out, err)
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err
    assert count_rows(dsn) == 0


def test_conflicting_url_is_exit_4(database_env: URL, dsn: str) -> None:
    add_json("one", "--url", "https://same.io")
    code, _, err = invoke("add", "two", "--url", "https://same.io")
    assert code == EXIT_CONFLICT
    assert "url already exists" in err
    assert count_rows(dsn) == 1


def test_missing_tutorial_is_exit_3(database_env: URL) -> None:
    code, _, err = invoke("get", "424242")
    assert code == EXIT_NOT_FOUND
    assert "not found" in err


def test_unreachable_database_is_exit_5(monkeypatch: pytest.MonkeyPatch) -> None:
    from tutorials.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:1/nowhere")
    monkeypatch.setenv("TUTORIALS_CONNECT_TIMEOUT", "2")
    get_settings.cache_clear()
    try:
        code, out, err = invoke("list")
    finally:
        get_settings.cache_clear()
    assert code == 5
    assert "s3cret" not in out + err
    assert "Traceback" not in out + err


# --- Output people read ---------------------------------------------------------------------


def test_get_prints_one_field_a_line(database_env: URL) -> None:
    saved = add_json("Async", "--url", "https://a.io", "--tag", "python", "--tag", "sql")
    code, out, err = invoke("get", str(saved["tutorial_id"]))
    assert (code, err) == (0, "")
    stamp = str(saved["created_at"]).replace("T", " ").replace("Z", "+00:00")
    assert out.splitlines() == [
        f"tutorial_id  {saved['tutorial_id']}",
        "name         Async",
        "url          https://a.io/",
        "description",
        "tags         python, sql",
        f"created_at   {stamp}",
        f"updated_at   {stamp}",
        "version      1",
    ]


def test_control_characters_are_shown_escaped(database_env: URL, dsn: str) -> None:
    async def store() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return int(
                await connection.fetchval(
                    "INSERT INTO tutorials (name, tags) VALUES ($1, $2) RETURNING tutorial_id",
                    "red \x1b[31m alert\x07",
                    ["t\x1bx"],
                )
            )
        finally:
            await connection.close()

    key = run_async(store)
    code, out, _ = invoke("get", str(key))
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "name         red \\x1b[31m alert\\x07" in out.splitlines()
    code, out, _ = invoke("list")
    assert "\x1b" not in out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["search", "nothing-like-this"], "no tutorial matches 'nothing-like-this'"),
        (["list"], "no tutorials yet"),
        (["list", "--tag", "python", "--tag", "sql"], "no tutorial carries python, sql"),
    ],
)
def test_an_empty_answer_is_a_line_not_an_empty_table(
    database_env: URL, args: list[str], line: str
) -> None:
    assert invoke(*args) == (0, line + "\n", "")


LONG_URL = "https://example.com/" + "a-very-long-path-segment/" * 6 + "end"


def test_a_table_at_80_columns_never_breaks_a_url(database_env: URL) -> None:
    add_json("A tutorial with a long address", "--url", LONG_URL, "--tag", "python")
    add_json("Short", "--url", "https://s.io/")
    result = runner.invoke(app, ["list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert lines[0].split() == ["id", "name", "url", "tags", "version", "updated"]
    assert "A tutorial with" in result.stdout and "python" in result.stdout  # all columns
    shown = [word for line in lines for word in line.split() if word.startswith("https://e")]
    assert len(shown) == 1, result.stdout  # on one line, never folded onto the next
    (cell,) = shown
    assert cell.endswith("…") and LONG_URL.startswith(cell[:-1]), cell
    assert "segment" not in result.stdout.replace(cell, "")  # the cut part is nowhere
    assert "https://s.io/" in result.stdout


# --- Bulk delete ------------------------------------------------------------------------------


def test_delete_by_filter_with_a_dry_run_first(database_env: URL, dsn: str) -> None:
    for name, tag in (("one", "draft"), ("two", "draft"), ("three", "kept")):
        add_json(name, "--tag", tag)
    assert invoke("delete", "--tag", "draft", "--dry-run") == (0, "would delete 2 tutorials\n", "")
    assert count_rows(dsn) == 3
    assert invoke("delete", "--tag", "draft") == (0, "deleted 2 tutorials\n", "")
    assert count_rows(dsn) == 1
    assert invoke("delete", "--q", "three") == (0, "deleted 1 tutorial\n", "")
    assert count_rows(dsn) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["delete"], "error: invalid input: give a filter (tags, a query), or ask for every"),
        (["delete", "1", "--tag", "x"], "error: give a tutorial id or a filter"),
        (["delete", "--all", "--tag", "x"], "error: invalid input: either a filter"),
        (["delete", "--if-version", "1", "--tag", "x"], "error: --if-version needs a tutorial id"),
    ],
)
def test_delete_refuses_what_would_be_ambiguous(
    database_env: URL, dsn: str, args: list[str], message: str
) -> None:
    add_json("x", "--tag", "x")
    code, out, err = invoke(*args)
    assert (code, out) == (EXIT_INVALID, "")
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert count_rows(dsn) == 1


def test_a_dry_run_of_one_tutorial(database_env: URL, dsn: str) -> None:
    key = str(add_json("x")["tutorial_id"])
    assert invoke("delete", key, "--dry-run") == (0, f"would delete tutorial {key}\n", "")
    assert invoke("delete", "999", "--dry-run")[0] == EXIT_NOT_FOUND
    assert count_rows(dsn) == 1
