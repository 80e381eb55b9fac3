"""`tutorials db ...`: the embedded server by command, and migrations from the package."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL
from tests.conftest import EmbeddedRoots, postmasters
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.cli._app import EXIT_UNAVAILABLE
from tutorials.db.embedded import EmbeddedPostgres, account
from tutorials.db.embedded.binaries import package_dir
from tutorials.db.engine import resolve_replicas
from tutorials.db.url import parse_database_url
from tutorials.settings import get_settings

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def embedded_home(embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No DATABASE_URL, and an embedded root of this test's own (initdb'd, stopped)."""
    root = embedded_roots.new(initdb=True)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TUTORIALS_DATABASE_URL", raising=False)
    monkeypatch.setenv("TUTORIALS_HOME", str(root))
    get_settings.cache_clear()
    try:
        yield root
    finally:
        invoke("db", "stop", "--force")
        get_settings.cache_clear()


def test_embedded_life_cycle_and_commands_without_database_url(embedded_home: Path) -> None:
    code, out, err = invoke("db", "status")
    assert (code, out) == (1, f"data directory: {embedded_home / 'data'}\nnot running\n")

    code, out, err = invoke("db", "start")
    assert code == 0, err
    url = out.strip()
    port = EmbeddedPostgres(embedded_home).status().port
    assert (
        url == f"postgresql://postgres@127.0.0.1:{port}/tutorials?passfile={embedded_home}/pgpass"
    )

    code, out, _ = invoke("db", "status")
    assert code == 0
    assert "running: pid" in out
    assert f"url: {url}\n" in out
    assert invoke("db", "url") == (0, f"{url}\n", "")
    sqlalchemy_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    assert invoke("db", "url", "--sqlalchemy") == (0, f"{sqlalchemy_url}\n", "")
    code, out, _ = invoke("db", "status", "--json")
    assert code == 0
    assert json.loads(out) == {
        "running": True,
        "pid": EmbeddedPostgres(embedded_home).status().pid,
        "port": port,
        "data_dir": str(embedded_home / "data"),
        "url": url,
        "replicas": [],
    }

    # With no DATABASE_URL the catalog commands use the embedded server, migrated on first use.
    code, out, err = invoke("add", "Embedded tutorial", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "Embedded tutorial"
    code, out, _ = invoke("db", "current")
    assert code == 0
    code, out, _ = invoke("db", "check")
    assert code == 0
    assert "no differences" in out

    assert invoke("db", "stop") == (0, "stopped\n", "")
    assert invoke("db", "stop") == (0, "not running\n", "")
    code, _, err = invoke("db", "url")
    assert code == 1
    assert (
        err == "error: the embedded PostgreSQL is not running: start it with `tutorials db start`\n"
    )


def test_start_with_replicas_makes_them_and_every_command_finds_them(embedded_home: Path) -> None:
    code, out, err = invoke("db", "start", "--replicas", "1")
    assert code == 0, err
    url = out.strip()
    (replica,) = EmbeddedPostgres(embedded_home).replicas()
    replica_url = url.replace(
        f":{EmbeddedPostgres(embedded_home).status().port}/", f":{replica.port}/"
    )
    assert err == f"replica 1: {replica_url}\n"
    assert replica.layout.root == embedded_home / "replica-1"

    async def in_recovery(target: str) -> bool:
        connection = await asyncpg.connect(target)
        try:
            return bool(await connection.fetchval("SELECT pg_is_in_recovery()"))
        finally:
            await connection.close()

    assert asyncio.run(in_recovery(url)) is False
    assert asyncio.run(in_recovery(replica_url)) is True
    # With no DATABASE_URL and no TUTORIALS_REPLICA_URLS, reads are routed to it.
    assert resolve_replicas(get_settings()) == [parse_database_url(replica_url)]
    code, out, _ = invoke("db", "status", "--json")
    assert json.loads(out)["replicas"] == [
        {"index": 1, "pid": replica.pid, "port": replica.port, "url": replica_url}
    ]
    assert (
        f"replica 1: pid {replica.pid}, port {replica.port}, url {replica_url}\n"
        in (invoke("db", "status")[1])
    )
    # A plain start starts it again; stop stops it with the primary.
    assert invoke("db", "stop") == (0, "stopped\n", "")
    assert EmbeddedPostgres(embedded_home).replicas() == []
    assert postmasters(replica.layout.data) == []
    code, _, err = invoke("db", "start")
    assert (code, err) == (0, f"replica 1: {replica_url}\n")


def test_the_printed_url_works_with_psql(embedded_home: Path) -> None:
    url = invoke("db", "start")[1].strip()
    psql = subprocess.run(
        [package_dir() / "pginstall" / "bin" / "psql", "-X", "-w", "-At", url, "-c", "SELECT 7"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "LC_MESSAGES": "C"},
        check=False,
    )
    assert (psql.returncode, psql.stdout) == (0, "7\n"), psql.stderr


def test_stop_refuses_while_clients_are_connected(embedded_home: Path) -> None:
    url = invoke("db", "start")[1].strip()

    async def hold(count: int, then: Callable[[], tuple[int, str, str]]) -> tuple[int, str, str]:
        held = [await asyncpg.connect(url) for _ in range(count)]
        try:
            return await asyncio.to_thread(then)
        finally:
            for conn in held:
                if not conn.is_closed():
                    await conn.close()

    for count, noun in ((1, "connection"), (2, "connections")):
        code, out, err = asyncio.run(hold(count, lambda: invoke("db", "stop")))
        assert (code, out) == (1, "")
        assert err == (
            f"error: the embedded PostgreSQL has {count} client {noun} open; "
            "`tutorials db stop --force` stops it anyway\n"
        )
        assert EmbeddedPostgres(embedded_home).status().running

    assert asyncio.run(hold(1, lambda: invoke("db", "stop", "--force"))) == (0, "stopped\n", "")
    assert EmbeddedPostgres(embedded_home).status().running is False


@pytest.mark.skipif(os.geteuid() != 0, reason="the service account exists only as root")
def test_commands_that_do_not_provision_say_to_run_db_start(embedded_home: Path) -> None:
    code, out, err = invoke("list")
    assert (code, out) == (EXIT_UNAVAILABLE, "")
    assert (
        err == "error: the embedded PostgreSQL is not running: start it with `tutorials db start`\n"
    )
    assert EmbeddedPostgres(embedded_home).status().running is False


@pytest.mark.skipif(os.geteuid() != 0, reason="the service account exists only as root")
def test_db_start_provisions_the_service_account(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"tutorials-t{uuid.uuid4().hex[:10]}"
    monkeypatch.setattr(account, "SERVICE_USER", name)
    root = embedded_roots.new()
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TUTORIALS_HOME", str(root))
    get_settings.cache_clear()
    try:
        code, _, err = invoke("db", "start")
        assert code == 0, err
        uid = pwd.getpwnam(name).pw_uid
        assert (root / "data").stat().st_uid == uid
        pid = EmbeddedPostgres(root).status().pid
        assert os.stat(f"/proc/{pid}").st_uid == uid
        assert invoke("db", "stop") == (0, "stopped\n", "")
    finally:
        EmbeddedPostgres(root).stop()
        get_settings.cache_clear()
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="unsafe roots are refused as root only")
def test_db_start_refuses_an_unsafe_root_in_one_line(
    embedded_roots: EmbeddedRoots, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = embedded_roots.new()
    root.chmod(0o777)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TUTORIALS_HOME", str(root))
    get_settings.cache_clear()
    try:
        code, out, err = invoke("db", "start")
    finally:
        get_settings.cache_clear()
    assert (code, out) == (1, "")
    assert err == (
        f"error: refusing to run the embedded PostgreSQL as root in {root}: {root} is writable "
        "by its group or by everyone (use a root-owned directory, e.g. "
        "TUTORIALS_HOME=/var/lib/tutorials/postgres)\n"
    )


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


def test_upgrade_sql_prints_the_migrations_without_touching_a_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on port 1: a connection attempt would fail the command.
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    get_settings.cache_clear()
    try:
        code, out, err = invoke("db", "upgrade", "--sql", "0001:head")
        bad_code, _, bad_err = invoke("db", "upgrade", "--sql", "0001:f00d")
    finally:
        get_settings.cache_clear()
    assert code == 0, err
    assert out.startswith("BEGIN;\n\n-- Running upgrade 0001 -> 0002\n")
    assert "SET LOCAL lock_timeout = '300ms';" in out
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_tutorials_search ON tutorials" in out
    assert "ALTER TABLE tutorials VALIDATE CONSTRAINT ck_tutorials_url_http;" in out
    assert out.rstrip().endswith(
        "UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = "
        "'0003';\n\nCOMMIT;"
    )
    assert bad_code == 1
    assert bad_err.strip().splitlines() == [bad_err.strip()]
    assert "f00d" in bad_err
