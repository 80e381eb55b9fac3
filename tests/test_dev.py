"""`./dev`: commands run in the caller's directory, and a call that installs nothing prints
nothing of its own (it used to print "Bytecode compiled N files" on every call, and to change
into the repository, so `main/dev tutorials import tutorials.csv` could not find the file)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

ROOT = Path(__file__).resolve().parent.parent
DEV = str(ROOT / "dev")

needs_uv = pytest.mark.skipif(
    shutil.which("uv") is None and not (ROOT / ".tools" / "bin" / "uv").exists(),
    reason="./dev would first install uv from the network",
)


def dev(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DEV, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@needs_uv
def test_paths_are_the_callers_and_nothing_else_is_said(database_env: URL, tmp_path: Path) -> None:
    dev("tutorials", "--help", cwd=tmp_path)  # installs, if this checkout has not yet
    (tmp_path / "rows.csv").write_text("name,url\nOne,https://one.example/\n")
    imported = dev("tutorials", "import", "rows.csv", "--quiet", cwd=tmp_path)
    assert (imported.returncode, imported.stdout, imported.stderr) == (0, "", "")
    exported = dev("tutorials", "export", "out.csv", cwd=tmp_path)
    assert exported.returncode == 0
    assert re.fullmatch(r"exported 1 rows to out\.csv in \d+\.\d s\n", exported.stderr)
    assert (tmp_path / "out.csv").read_text() == (
        'name,url,description,tags\nOne,https://one.example/,,""\n'
    )
    assert not (ROOT / "out.csv").exists()


@needs_uv
def test_a_failing_command_prints_its_one_line(database_env: URL, tmp_path: Path) -> None:
    failed = dev("tutorials", "get", "424242", cwd=tmp_path)
    assert (failed.returncode, failed.stdout) == (3, "")
    assert failed.stderr == "error: tutorial 424242 not found\n"


def test_the_runtime_commands_install_no_development_tools() -> None:
    script = (ROOT / "dev").read_text()
    serve = script.split("    serve)", 1)[1].split(";;", 1)[0]
    assert "ensure runtime" in serve
    assert "set -- --no-dev --inexact" in script
    assert "UV_COMPILE_BYTECODE" not in script  # compiled when installing only (--compile-bytecode)
    assert 'cd "$repo"' not in serve and 'cd "$(dirname' not in script
    assert os.access(ROOT / "dev", os.X_OK)
