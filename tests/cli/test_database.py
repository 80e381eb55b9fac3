"""`tutorials db ...`: the embedded server by command, and migrations from the package."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.settings import get_settings

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def embedded_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No DATABASE_URL, and a private embedded server root for this test, stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="tutorials-cli-", dir="/tmp"))
    root.chmod(0o755)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TUTORIALS_DATABASE_URL", raising=False)
    monkeypatch.setenv("TUTORIALS_HOME", str(root))
    get_settings.cache_clear()
    try:
        yield root
    finally:
        invoke("db", "stop")
        get_settings.cache_clear()
        shutil.rmtree(root, ignore_errors=True)


def test_embedded_life_cycle_and_commands_without_database_url(embedded_home: Path) -> None:
    code, out, _ = invoke("db", "status")
    assert code == 1
    assert "not running" in out

    code, out, err = invoke("db", "start")
    assert code == 0, err
    url = out.strip()
    assert url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")

    code, out, _ = invoke("db", "status")
    assert code == 0
    assert "running: pid" in out
    assert invoke("db", "url")[1].strip() == url

    # With no DATABASE_URL the catalog commands use the embedded server, migrated on first use.
    code, out, err = invoke("add", "Embedded tutorial", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "Embedded tutorial"
    code, out, _ = invoke("db", "current")
    assert code == 0
    code, out, _ = invoke("db", "check")
    assert code == 0
    assert "no differences" in out

    assert invoke("db", "stop")[1].strip() == "stopped"
    assert invoke("db", "stop")[1].strip() == "not running"
    code, _, err = invoke("db", "url")
    assert code == 1
    assert "not running" in err


def test_server_commands_refuse_when_database_url_is_set(database_env: URL) -> None:
    code, _, err = invoke("db", "start")
    assert code == 2
    assert "DATABASE_URL is set" in err


def test_migration_commands_on_database_url(
    empty_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        assert invoke("db", "upgrade")[0] == 0
        assert invoke("db", "check")[0] == 0
        assert invoke("db", "downgrade", "base")[0] == 0
        code, _, err = invoke("db", "downgrade", "nonexistent-revision")
        assert code == 1
        assert err.startswith("error: ")
        assert invoke("db", "upgrade", "head")[0] == 0
    finally:
        get_settings.cache_clear()
