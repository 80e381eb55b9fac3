"""`kill -9` of a running import, then the same import again: no duplicates, no partial batch.

Black-box through the command line on a cluster of the test's own: `tutorials import` runs in a
subprocess with a small batch size; as soon as the table shows committed rows (and before the
end), the process is SIGKILLed. What the crash leaves must be whole batches — exactly the first
k batches of the file — and once the server has dropped the dead client's session, running the
same import again must end with every row exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import pytest
from tests.reliability.harness import Figures, PrivateDb, scalar, sessions_of
from tests.serving import service_env

ROWS = 30_000
BATCH = 1_000
APP = "rel-import"
CLI = [sys.executable, "-c", "from tutorials.cli import main; main()"]


def _write_rows(path: Path) -> list[str]:
    path.parent.chmod(0o755)
    urls = [f"https://import.example/{index}" for index in range(ROWS)]
    with path.open("w", encoding="utf-8") as out:
        for index, url in enumerate(urls):
            row = {
                "name": f"imported {index}",
                "url": url,
                "description": "x" * 40,
                "tags": ["kill"],
            }
            out.write(json.dumps(row) + "\n")
    return urls


async def _import(env: dict[str, str], path: Path, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, "import", str(path), "--batch-size", str(BATCH), "--quiet", "--json",
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
async def test_kill_9_mid_import_then_rerun(
    own_db: PrivateDb, tmp_path: Path, figures: Figures
) -> None:
    source = tmp_path / "rows.ndjson"
    urls = _write_rows(source)
    env = service_env(own_db.url_text, TUTORIALS_APPLICATION_NAME=APP)
    dsn = own_db.dsn

    started = time.monotonic()
    process = await _import(env, source, tmp_path)
    killed_at_rows = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.returncode is None:
        committed = await scalar(dsn, "SELECT count(*) FROM tutorials")
        assert isinstance(committed, int)
        if committed >= 3 * BATCH:
            process.send_signal(signal.SIGKILL)
            killed_at_rows = committed
            print(f"killed after {time.monotonic() - started:.1f} s")
            break
        await asyncio.sleep(0.01)
    await process.wait()
    killed = process.returncode == -signal.SIGKILL
    # The server notices the dead client and rolls its open transaction back.
    for _ in range(300):
        if not await sessions_of(dsn, APP):
            break
        await asyncio.sleep(0.05)
    leftover_sessions = await sessions_of(dsn, APP)
    after_crash = await scalar(dsn, "SELECT count(*) FROM tutorials")
    present = await scalar(dsn, "SELECT array_agg(url ORDER BY tutorial_id) FROM tutorials")
    assert isinstance(after_crash, int) and isinstance(present, list)

    rerun_started = time.monotonic()
    rerun = await _import(env, source, tmp_path)
    async with asyncio.timeout(180):
        out, err = await rerun.communicate()
    rerun_seconds = time.monotonic() - rerun_started
    total = await scalar(dsn, "SELECT count(*) FROM tutorials")
    distinct = await scalar(dsn, "SELECT count(DISTINCT url) FROM tutorials")
    versions = await scalar(dsn, "SELECT max(version) FROM tutorials")
    figures(
        face="cli",
        fault="kill -9 of tutorials import",
        rows_in_file=ROWS,
        batch_size=BATCH,
        faults_injected=int(killed),
        rows_seen_at_kill=killed_at_rows,
        rows_after_crash=after_crash,
        whole_batches_after_crash=after_crash / BATCH,
        rows_after_rerun=total,
        distinct_urls=distinct,
        rerun_ms=round(rerun_seconds * 1000),
    )
    assert killed, "the import ended before it could be killed: nothing was tested"
    assert leftover_sessions == []
    # Whole batches only, and exactly the file's first ones.
    assert after_crash % BATCH == 0 and 0 < after_crash < ROWS
    assert sorted(present) == sorted(urls[:after_crash])
    assert rerun.returncode == 0, err.decode(errors="replace")[-1500:]
    assert total == distinct == ROWS
    assert versions == 1  # rows already there were matched, not rewritten
    summary = json.loads(out)
    assert isinstance(summary, dict)
