"""The README's library snippet runs, as written, under Python's development mode with every
warning an error: no unclosed connection, no un-awaited coroutine, no deprecation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import URL

README = Path(__file__).resolve().parent.parent / "README.md"

# Development mode turns on asyncio's debug mode, which logs any step of a task that holds the
# loop longer than 100 ms. That is a timing observation about a busy machine (CI runs two
# workers on two cores), not a warning about the snippet, so it is the one line let through.
SLOW_STEP = re.compile(r"^Executing <.*> took \d+\.\d+ seconds\n", re.MULTILINE)


def library_snippet() -> str:
    """The first Python block after the README's "Use it" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README has no Python block under 'Use it'"
    return found.group(1)


def test_the_snippet_closes_what_it_opens() -> None:
    snippet = library_snippet()
    assert "await close_default_database()" in snippet
    assert "asyncio.run(main())" in snippet


def test_the_readme_library_snippet_runs_clean_in_development_mode(
    database_url: URL, tmp_path: Path
) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(library_snippet(), encoding="utf-8")
    env = {
        **os.environ,
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "PYTHONWARNINGS": "error",
    }
    process = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert (process.returncode, SLOW_STEP.sub("", process.stderr)) == (0, "")
    assert re.fullmatch(
        r"TutorialRecord\(tutorial_id=1, name='Async SQLAlchemy'.*\) True\n", process.stdout
    ), process.stdout
