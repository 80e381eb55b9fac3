"""Hostile input through the command line: one `error:` line naming the problem and a non-zero
exit (2 for invalid input), never a traceback, and a fingerprint of the table proves nothing
changed. Injection payloads are stored literally. One test passes genuinely invalid UTF-8 bytes
on a real command line (a subprocess), the way a shell would.

Each test walks a family of the corpus on one database and lists every mishandled input.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from tests.security.corpus import (
    BAD_IDS,
    BAD_TEXT,
    FORGED_CURSORS,
    INJECTION,
    OVER_LONG,
    fingerprint,
)
from tests.support import run_async
from typer.testing import CliRunner

from tutorials.cli import app
from tutorials.cli._app import EXIT_CONFLICT, EXIT_INVALID

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def snapshot(dsn: str) -> tuple[int, str, bool]:
    return run_async(lambda: fingerprint(dsn))


class Refusals:
    """Run commands; remember every one not refused with exit 2 and one precise line."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.failures: list[str] = []

    def expect(self, args: list[str], mentions: str, code: int = EXIT_INVALID) -> None:
        label = " ".join(arg[:40] for arg in args)
        before = snapshot(self.dsn)
        exit_code, out, err = invoke(*args)
        if exit_code != code:
            self.failures.append(f"{label!r}: exit {exit_code}, not {code}: {(out + err)[-200:]}")
        elif "Traceback" in out + err:
            self.failures.append(f"{label!r}: printed a traceback: {(out + err)[-600:]}")
        elif len(err.strip().splitlines()) != 1 and "Usage:" not in err:
            self.failures.append(f"{label!r}: not one line: {err!r:.200}")
        elif not re.search(mentions, err, re.IGNORECASE):
            self.failures.append(f"{label!r}: vague message {err.strip()!r:.200}")
        if snapshot(self.dsn) != before:
            self.failures.append(f"{label!r}: the table changed")


_FLAGS = {"name": "--name", "url": "--url", "description": "--description", "tags": "--tag"}


def test_unstorable_text(database_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for _label, (bad, mentions) in sorted(BAD_TEXT.items()):
        for field, flag in _FLAGS.items():
            value = f"https://example.com/{bad}" if field == "url" else bad
            refusals.expect(
                ["add", value] if field == "name" else ["add", "ok", flag, value], mentions
            )
            refusals.expect(["update", "1", flag, value], mentions)
    assert refusals.failures == []


def test_over_long_values(database_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for field, value in OVER_LONG.values():
        if isinstance(value, list):
            args = ["add", "ok"]
            for tag in value:
                args += ["--tag", tag]
            refusals.expect(args, "tag")
        elif field == "name":
            refusals.expect(["add", value], "name")
        else:
            refusals.expect(["add", "ok", _FLAGS[field], value], field)
    assert refusals.failures == []


def test_injection_payloads_are_stored_literally(database_env: URL, seeded: str) -> None:
    before = snapshot(seeded)
    for payload in INJECTION:
        code, out, err = invoke("add", payload, "--description", payload, "--json")
        assert code == 0, err
        stored = json.loads(out)
        assert (stored["name"], stored["description"]) == (payload.strip(), payload)
        code, out, err = invoke("search", payload, "--json")
        assert code in (0, EXIT_INVALID), err  # only punctuation is a blank query: exit 2
        after = snapshot(seeded)
        assert after[0] == before[0] + 1 and after[2], payload
        code, _, err = invoke("delete", str(stored["tutorial_id"]))
        assert code == 0, err
        assert snapshot(seeded) == before, payload


def test_ids_no_row_can_have(database_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for bad in BAD_IDS:
        for command in ("get", "delete", "update"):
            extra = ["--name", "x"] if command == "update" else []
            # `--` so that "-1" is an argument, not an unknown option.
            refusals.expect([command, *extra, "--", bad], "tutorial.?id|whole number")
    assert refusals.failures == []


def test_ids_are_plain_ascii_digits(database_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for bad in ("1_0", "\u0661", "\uff11"):  # underscore grouping, Arabic-Indic, fullwidth
        refusals.expect(["get", bad], "tutorial.?id|whole number")
    assert refusals.failures == []


def test_forged_cursors(database_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for cursor in FORGED_CURSORS.values():
        refusals.expect(["list", "--cursor", cursor], "cursor")
        refusals.expect(["search", "seed", "--cursor", cursor], "cursor")
    assert refusals.failures == []


def test_list_and_search_parameters(database_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for args, mentions in [
        (["list", "--limit", "0"], "limit"),
        (["list", "--limit", "-1"], "limit"),
        (["list", "--limit", "101"], "limit"),
        (["list", "--limit", str(2**63)], "limit"),
        (["list", "--limit", "abc"], "limit"),
        (["list", "--tag", "a;b"], "tag"),
        (["list", "--tag", "'; DROP TABLE tutorials; --"], "tag"),
        (["search", "seed", "--tag", "x\x00"], "tag"),
        (["search", "a\x00b"], "NUL"),
        (["search", "q" * 1001], "1000|q"),
        (["search", "   "], "blank"),
        (["update", "1", "--if-version", "2"], "version 1, not 2"),
    ]:
        refusals.expect(args, mentions, EXIT_CONFLICT if args[0] == "update" else EXIT_INVALID)
    assert refusals.failures == []


def test_an_empty_update_writes_nothing(database_env: URL, seeded: str) -> None:
    """No field to change: the tutorial is shown as it is, its version kept (on every face)."""
    before = snapshot(seeded)
    code, out, err = invoke("update", "1", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["tutorial_id"], shown["name"], shown["version"]) == (1, "seed 0", 1)
    code, out, err = invoke("update", "1", "--if-version", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["version"] == 1
    assert snapshot(seeded) == before


def test_if_version_past_int32(database_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    refusals.expect(["update", "1", "--name", "x", "--if-version", str(2**31)], "version")
    refusals.expect(["delete", "1", "--if-version", str(2**31)], "version")
    assert refusals.failures == []


def test_invalid_utf8_on_a_real_command_line(
    database_env: URL, seeded: str, tmp_path: Path
) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates; they are refused, not stored."""
    before = snapshot(seeded)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TUTORIALS_") and key != "DATABASE_URL"
    }
    env["DATABASE_URL"] = database_env.render_as_string(hide_password=False)
    env["TUTORIALS_AUTO_MIGRATE"] = "false"
    result = subprocess.run(
        [
            os.fsencode(sys.executable),
            b"-c",
            b"from tutorials.cli import main; main()",
            b"add",
            b"caf\xe9 \xff\xfe",
            b"--description",
            b"\xc3\x28",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = result.stderr.decode(errors="replace")
    assert result.returncode == EXIT_INVALID, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "name" in err
    assert snapshot(seeded) == before


def test_malformed_database_url_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from tutorials.settings import get_settings

    failures = []
    for url in (
        "postgresql://postgres@127.0.0.1:notaport/x",
        "mysql://postgres@127.0.0.1/x",
        "postgresql://postgres@127.0.0.1/x?sslmode=bogus",
        "not a url at all",
    ):
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        for args in (["list"], ["add", "x"], ["db", "current"]):
            code, _out, err = invoke(*args)
            if code != EXIT_INVALID or not err.startswith("error: ") or "DATABASE_URL" not in err:
                failures.append(f"{url} {args}: exit {code}, {err.strip()[:120]!r}")
    get_settings.cache_clear()
    assert failures == []


def test_import_rejects_a_deeply_nested_row(database_env: URL, seeded: str, tmp_path: Path) -> None:
    refusals = []
    deep = b"[" * 5000 + b"]" * 5000
    for name, content in [
        ("rows.ndjson", b'{"name": "fine"}\n' + deep + b"\n"),
        ("rows.json", b'[{"name": "fine"}, ' + deep + b"]"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        result = runner.invoke(app, ["import", str(path), "--json"])
        try:
            rejected = json.loads(result.stdout)["rejected"]
        except ValueError:
            rejected = None
        if result.exit_code != 1 or rejected != 1:
            refusals.append(f"{name}: exit {result.exit_code}, {result.exception!r:.200}")
    assert refusals == []


def test_export_to_a_device_writes_through_it(
    database_env: URL, seeded: str, tmp_path: Path
) -> None:
    """A private null device in the test's own directory stands in for /dev/null."""
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    device = tmp_path / "null"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    code, _out, err = invoke("export", str(device), "--format", "ndjson", "--quiet")
    assert code == 0, err
    assert stat.S_ISCHR(device.stat().st_mode), "the device was replaced by a file"
    assert not (tmp_path / "null.partial").exists()
