"""Lint every migration's SQL with squawk: `./dev lint-migrations` (CI runs it).

For each revision, the SQL Alembic writes offline (`upgrade --sql DOWN:REV`, Alembic's own
`alembic_version` bookkeeping left out) goes to one file, and `squawk` reads it. A finding
fails the run unless the revision accepts its rule, with the reason, in one place: a
module-level `squawk_accepts = {"rule": "why"}` in the revision file. An accepted rule that
squawk no longer reports fails too, so acceptances never outlive their reason.

    python scripts/lint_migrations.py [--keep DIR]    # DIR: keep the per-revision SQL files
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import URL

from tutorials.db.migrate import alembic_config

#: The oldest PostgreSQL the migrations are written for (squawk's rules depend on it).
PG_VERSION = "14"
_STATEMENT_END = re.compile(r";\n")


@dataclass(frozen=True)
class Finding:
    revision: str
    rule: str
    line: int
    message: str


def revisions() -> list[Script]:
    """The revisions from the first to the head."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return list(reversed(list(scripts.walk_revisions())))


def offline_sql(script: Script) -> str:
    """What `alembic upgrade --sql DOWN:REV` writes for one revision, bookkeeping removed."""
    buffer = io.StringIO()
    # Offline SQL needs a dialect, never a server: a URL nobody connects to.
    config = alembic_config(url=URL.create("postgresql+asyncpg", database="offline"))
    config.output_buffer = buffer
    down = script.down_revision
    start = "base" if down is None else str(down)
    command.upgrade(config, f"{start}:{script.revision}", sql=True)
    statements = _STATEMENT_END.split(buffer.getvalue())
    kept = [s for s in statements if "alembic_version" not in s]
    return ";\n".join(kept)


def squawk(path: Path) -> list[dict[str, object]]:
    executable = shutil.which("squawk") or str(Path(sys.executable).parent / "squawk")
    result = subprocess.run(
        [executable, "--reporter", "json", "--pg-version", PG_VERSION, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip().startswith("["):
        raise SystemExit(f"squawk failed on {path}: {result.stderr.strip()[:500]}")
    found: list[dict[str, object]] = json.loads(result.stdout)
    return found


def accepted(script: Script) -> dict[str, str]:
    value = getattr(script.module, "squawk_accepts", {})
    if not isinstance(value, dict) or not all(
        isinstance(rule, str) and isinstance(why, str) and why.strip()
        for rule, why in value.items()
    ):
        raise SystemExit(f"{script.revision}: squawk_accepts must map rule names to reasons")
    return value


def lint(keep: Path | None) -> int:
    directory = keep or Path(tempfile.mkdtemp(prefix="lint-migrations-"))
    directory.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    try:
        for script in revisions():
            revision = str(script.revision)
            path = directory / f"{revision}.sql"
            path.write_text(offline_sql(script), encoding="utf-8")
            findings = [
                Finding(revision, str(f["rule_name"]), int(str(f["line"])), str(f["message"]))
                for f in squawk(path)
            ]
            accepts = accepted(script)
            problems += [
                f"{revision}: {f.rule} (line {f.line} of {path.name}): {f.message}"
                for f in findings
                if f.rule not in accepts
            ]
            problems += [
                f"{revision}: accepts {rule}, which squawk no longer reports"
                for rule in sorted(set(accepts) - {f.rule for f in findings})
            ]
            status = "ok" if not any(p.startswith(f"{revision}:") for p in problems) else "FAIL"
            print(
                f"{revision}: {len(findings)} findings, "
                f"{len({f.rule for f in findings} & set(accepts))} rules accepted: {status}"
            )
    finally:
        if keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            "lint-migrations: make the step safe (docs/MIGRATIONS.md) or accept the rule in the "
            "revision's squawk_accepts with the reason",
            file=sys.stderr,
        )
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the per-revision SQL files here")
    return lint(parser.parse_args().keep)


if __name__ == "__main__":
    sys.exit(main())
