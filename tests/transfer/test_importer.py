"""An import of a file that breaks off: the rows before the break are in, and the summary says
where it broke and how many lines after it were not read (nothing is dropped in silence)."""

from __future__ import annotations

import asyncio
import io

import asyncpg
from sqlalchemy.engine import URL

from tutorials.db.session import Database
from tutorials.settings import Settings
from tutorials.transfer import import_file, import_rows


async def names(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT name FROM tutorials ORDER BY tutorial_id")
    finally:
        await connection.close()
    return [row[0] for row in rows]


async def test_a_quote_never_closed_stops_the_import_and_counts_what_follows(
    database: Database, dsn: str
) -> None:
    data = (
        b"name,url\n"
        b"one,https://example.com/1\n"
        b'"two,https://example.com/2\n'  # the quote is never closed
        b"three,https://example.com/3\n"
        b"four,https://example.com/4\n"
    )
    summary = await import_file(database, io.BytesIO(data), format="csv")
    assert (summary.inserted, summary.rejected, summary.unread_lines) == (1, 1, 2)
    assert summary.stopped == (
        "line 3: malformed CSV: a quoted field opened on this line is never closed; "
        "the 2 lines after it (4 to 5) were not read"
    )
    assert summary.to_dict()["unread_lines"] == 2
    assert await names(dsn) == ["one"]


async def test_a_json_array_that_breaks_off(database: Database, dsn: str) -> None:
    data = b'[{"name": "one"},\n {oops},\n {"name": "never"}\n]\n'
    summary = await import_file(database, io.BytesIO(data), format="json")
    assert (summary.inserted, summary.unread_lines) == (1, 2)
    assert summary.stopped is not None
    assert summary.stopped.endswith("; the 2 lines after it (3 to 4) were not read")
    assert await names(dsn) == ["one"]


async def test_an_input_read_to_its_end_reads_everything(database: Database) -> None:
    summary = await import_file(database, io.BytesIO(b"name\none\ntwo\n"), format="csv")
    assert (summary.inserted, summary.unread_lines, summary.stopped) == (2, 0, None)


async def test_a_batch_waiting_for_a_lock_longer_than_a_request_would_still_lands(
    database: Database, database_url: URL, settings: Settings, dsn: str
) -> None:
    """A batch is bounded by the import's own `batch_timeout`, not by a request's client-side
    deadline (here 1.2 s): a row another writer holds for 2 s is updated once it is free."""
    url = "https://example.com/held"
    await import_rows(database, [{"name": "before", "url": url}])
    holder = await asyncpg.connect(dsn)
    strict = Database.from_url(
        database_url, settings.model_copy(update={"statement_timeout_ms": 200})
    )
    try:
        assert strict.unit_deadline == 1.2
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM tutorials WHERE url = $1 FOR UPDATE", url)

        async def let_go() -> None:
            await asyncio.sleep(2)
            await held.rollback()

        releasing = asyncio.create_task(let_go())
        summary = await import_rows(strict, [{"name": "after", "url": url}])
        await releasing
        assert (summary.inserted, summary.updated, summary.rejected) == (0, 1, 0)
    finally:
        await strict.dispose()
        await holder.close()
    assert await names(dsn) == ["after"]
