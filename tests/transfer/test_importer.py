"""An import of a file that breaks off: the rows before the break are in, and the summary says
where it broke and how many lines after it were not read (nothing is dropped in silence)."""

from __future__ import annotations

import io

import asyncpg

from tutorials.db.session import Database
from tutorials.transfer import import_file


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
