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
        ["update", "1"],
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
