"""The service refuses to start bound to a non-loopback address without tokens, unless told
explicitly (`--allow-open-writes`); with tokens it starts, and its writes are protected.

Checked in-process: the check runs before anything is opened or bound, and the port is proven
free afterwards. A real start on 0.0.0.0 with tokens is part of test_secret_leaks.py (the test
only ever talks to 127.0.0.1).
"""

from __future__ import annotations

import socket

import pytest
from tests.support import free_port
from typer.testing import CliRunner

from tutorials.cli import app as cli_app
from tutorials.cli._app import EXIT_INVALID
from tutorials.settings import get_settings

NON_LOOPBACK = [
    "0.0.0.0", "::", "[::]", "192.0.2.10", "10.0.0.1", "example.com", "127.0.0.1.nip.io",
    "::ffff:0.0.0.0", "0",
]  # fmt: skip


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("via", ["option", "environment"])
def test_non_loopback_without_tokens_is_refused(monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    runner = CliRunner()
    monkeypatch.delenv("TUTORIALS_API_TOKENS", raising=False)
    # An unreachable database: if the check did not stop it, the command would fail later
    # with exit 5 ("cannot reach the database"), not with the refusal.
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
    monkeypatch.setenv("TUTORIALS_CONNECT_TIMEOUT", "1")
    failures = []
    for host in NON_LOOPBACK:
        port = free_port()
        if via == "option":
            args = ["serve", "--host", host, "--port", str(port)]
        else:
            monkeypatch.setenv("TUTORIALS_HOST", host)
            args = ["serve", "--port", str(port)]
        get_settings.cache_clear()
        result = runner.invoke(cli_app, args)
        if result.exit_code != EXIT_INVALID or "--allow-open-writes" not in result.stderr:
            failures.append(f"{host}: exit {result.exit_code}: {result.stderr.strip()[:160]}")
        if not _port_is_free(port):
            failures.append(f"{host}: something listens on {port}")
    get_settings.cache_clear()
    assert failures == []


def test_empty_token_list_is_no_protection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens that are only separators or blanks count as no tokens at all."""
    runner = CliRunner()
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
    for tokens in (",", " , ", "   "):
        monkeypatch.setenv("TUTORIALS_API_TOKENS", tokens)
        get_settings.cache_clear()
        result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--port", str(free_port())])
        assert result.exit_code == EXIT_INVALID, (tokens, result.stderr)
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("extra_env", "extra_args"),
    [({"TUTORIALS_API_TOKENS": "bind-test-token"}, []), ({}, ["--allow-open-writes"])],
    ids=["tokens", "allow-open-writes"],
)
def test_tokens_or_the_explicit_flag_let_it_through(
    monkeypatch: pytest.MonkeyPatch, extra_env: dict[str, str], extra_args: list[str]
) -> None:
    """Past the check, the command goes on to open the database: here an unreachable one, so
    it ends with exit 5 ("cannot reach the database") before binding anything. The real start
    on 0.0.0.0 with tokens (and 401s on writes) is in test_secret_leaks.py."""
    runner = CliRunner()
    monkeypatch.delenv("TUTORIALS_API_TOKENS", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
    monkeypatch.setenv("TUTORIALS_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("TUTORIALS_AUTO_MIGRATE", "false")
    for name, value in extra_env.items():
        monkeypatch.setenv(name, value)
    # `serve` would point the root logger at this process's stderr as JSON: not in pytest.
    monkeypatch.setattr("tutorials.api.logs.configure_logging", lambda *args, **kwargs: None)
    get_settings.cache_clear()
    port = free_port()
    try:
        result = runner.invoke(
            cli_app, ["serve", "--host", "0.0.0.0", "--port", str(port), *extra_args]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 5, result.stderr
    assert "--allow-open-writes" not in result.stderr
    assert _port_is_free(port)
