"""Item 5 of issue 12: an import's memory is bounded in bytes, and so is their number.

A batch is written once it holds `import_batch_bytes` of text (8 MiB by default), not only at
10,000 rows: 10,000 descriptions of 20,000 characters made one batch of 200 MB before (four
concurrent 160 MB imports peaked at 1.35 GB). `POST /tutorials/import` runs at most
`max_concurrent_imports` at once; one more is refused at once with 503 and Retry-After, before
its body is read. The command line and the library are not capped (one process, one caller).
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import httpx
from tests.security.bounds.conftest import Figures

from tutorials.api import create_app
from tutorials.db.session import Database
from tutorials.schemas import DESCRIPTION_MAX
from tutorials.settings import Settings
from tutorials.transfer import DEFAULT_BATCH, DEFAULT_BATCH_BYTES, ImportSummary, import_rows

ROWS = 1_200


def _long_rows() -> Iterator[dict[str, object]]:
    for n in range(ROWS):
        yield {"name": f"long {n}", "description": chr(ord("a") + n % 26) * DESCRIPTION_MAX}


async def test_a_batch_is_bounded_in_bytes(database: Database, figures: Figures) -> None:
    committed: list[int] = []

    def progress(summary: ImportSummary) -> None:
        committed.append(summary.rows)

    tracemalloc.start()
    try:
        summary = await import_rows(database, _long_rows(), on_progress=progress)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    batches = [after - before for before, after in zip([0, *committed], committed, strict=False)]
    text = ROWS * DESCRIPTION_MAX
    figures(
        rows=ROWS,
        text_mib=round(text / 2**20, 1),
        batch_bytes_mib=DEFAULT_BATCH_BYTES // 2**20,
        batches=len(batches),
        largest_batch_rows=max(batches),
        python_peak_mib=round(peak / 2**20, 1),
    )
    assert summary.inserted == ROWS
    per_batch = DEFAULT_BATCH_BYTES // (DESCRIPTION_MAX + len("long 1199")) + 1
    assert max(batches) <= per_batch < DEFAULT_BATCH
    assert len(batches) == -(-ROWS // per_batch)
    assert peak < 4 * DEFAULT_BATCH_BYTES  # two batches in flight, and their COPY buffers


async def test_one_import_more_than_allowed_is_a_503(database: Database, figures: Figures) -> None:
    settings = Settings(_env_file=None, auto_migrate=False, max_concurrent_imports=1)  # type: ignore[call-arg]
    app = create_app(settings, database)
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"name,url\nfirst,https://first.example/\n"
        await release.wait()
        yield b"second,https://second.example/\n"

    csv = {"Content-Type": "text/csv"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        first = asyncio.create_task(
            client.post("/tutorials/import", content=slow_body(), headers=csv)
        )
        await asyncio.sleep(0.2)  # the first import is reading its body
        refused = await client.post("/tutorials/import", content=b"name\nthird\n", headers=csv)
        release.set()
        done = await asyncio.wait_for(first, 30)
        again = await client.post("/tutorials/import", content=b"name\nthird\n", headers=csv)
    figures(
        max_concurrent_imports=1,
        second_status=refused.status_code,
        retry_after=refused.headers.get("retry-after"),
        first_status=done.status_code,
    )
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["detail"] == (
        "1 of 1 imports are running already, the most this service runs at once: "
        "send this one again later"
    )
    assert done.status_code == 200 and done.json()["inserted"] == 2
    assert again.status_code == 200 and again.json()["inserted"] == 1
