"""Backups: `export_rows(format="backup")` and `restore_file`, through the library.

A backup restored into an empty catalog gives back exactly the table (ids, every column,
versions, timestamps to the microsecond, the search document), and the ids go on after the
highest; into a catalog that is not empty it is refused, and nothing changes; a bad row or two
rows with one id refuse the whole backup, and nothing is written.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import URL

from tutorials import service
from tutorials.db.session import Database
from tutorials.errors import Conflict, InvalidInput
from tutorials.schemas import TutorialCreate
from tutorials.settings import Settings
from tutorials.transfer import export_rows, restore_file
from tutorials.transfer.readers import read_ndjson

#: Every column, `search` included: what "exactly the table" means.
EVERYTHING = (
    "SELECT tutorial_id, name, url, description, tags, created_at, updated_at, version, "
    "search::text FROM tutorials ORDER BY tutorial_id"
)


async def fetch(dsn: str, query: str = EVERYTHING) -> list[tuple[object, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await connection.fetch(query)]
    finally:
        await connection.close()


async def execute(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def a_catalog(database: Database, dsn: str) -> None:
    """Rows with gaps in their ids, versions above 1, NULLs, unicode, old timestamps."""
    for number, fields in enumerate(
        [
            {"name": "café ☕", "url": "https://example.com/1", "tags": ["python", "日本"]},
            {"name": "deleted later"},
            {"name": "no url", "description": 'quotes " and \\ backslash\nnewline'},
            {"name": "updated twice", "url": "https://example.com/4"},
        ]
    ):
        await service.create(database, TutorialCreate.model_validate({"name": "x", **fields}))
        del number
    await service.delete(database, 2)
    for text in ("once", "twice"):
        await service.update(database, 4, service.patch_of({"description": text}))
    await execute(
        dsn,
        "UPDATE tutorials SET created_at = '2001-02-03 04:05:06.789012+00' WHERE tutorial_id = 1",
    )


async def backup_of(database: Database) -> bytes:
    out = io.BytesIO()
    await export_rows(database, out, format="backup")
    return out.getvalue()


async def test_restore_into_an_empty_catalog_gives_back_exactly_the_table(
    database: Database, dsn: str
) -> None:
    await a_catalog(database, dsn)
    before = await fetch(dsn)
    backup = await backup_of(database)
    lines = backup.decode().splitlines()
    assert lines[0] == '{"tutorials_backup":1}'
    assert [json.loads(line)["tutorial_id"] for line in lines[1:]] == [1, 3, 4]
    assert json.loads(lines[1])["created_at"] == "2001-02-03T04:05:06.789012+00:00"

    assert await service.delete_matching(database, everything=True) == 3
    # as a new catalog: its identity has never handed out an id
    await execute(dsn, "ALTER TABLE tutorials ALTER COLUMN tutorial_id RESTART WITH 1")
    assert await restore_file(database, io.BytesIO(backup)) == 3
    assert await fetch(dsn) == before
    added = await service.create(database, TutorialCreate(name="after the restore"))
    assert added.tutorial_id == 5  # after the highest id restored
    assert await backup_of(database) != backup  # and the backup itself reads back the same:
    await service.delete(database, 5)
    assert await backup_of(database) == backup


async def test_a_restore_read_slowly_outlasts_a_requests_deadline(
    database: Database, database_url: URL, settings: Settings, dsn: str
) -> None:
    """A restore is one unit of work that reads its input as it arrives: it is bounded by its
    own statement timeout, not by the deadline of a request's unit of work (here 1.2 s)."""
    await a_catalog(database, dsn)
    backup = await backup_of(database)
    assert await service.delete_matching(database, everything=True) == 3

    async def slowly() -> AsyncIterator[bytes]:
        for line in backup.splitlines(keepends=True):
            yield line
            await asyncio.sleep(0.6)

    strict = Database.from_url(
        database_url, settings.model_copy(update={"statement_timeout_ms": 200})
    )
    try:
        assert strict.unit_deadline == 1.2
        assert await service.restore(strict, read_ndjson(slowly())) == 3
    finally:
        await strict.dispose()
    assert [row[0] for row in await fetch(dsn)] == [1, 3, 4]


async def test_restore_into_a_catalog_that_is_not_empty_is_refused(
    database: Database, dsn: str
) -> None:
    await a_catalog(database, dsn)
    backup = await backup_of(database)
    await service.delete(database, 1)
    before = await fetch(dsn)
    with pytest.raises(Conflict) as caught:
        await restore_file(database, io.BytesIO(backup))
    assert caught.value.detail.startswith("the catalog is not empty (2 tutorials): ")
    assert await fetch(dsn) == before


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ['{"tutorial_id": 1, "name": "x"}'],
            "line 2: a backup row has the fields created_at, description, name, tags, "
            "tutorial_id, updated_at, url, version",
        ),
        (["{not json"], "line 2: invalid JSON"),
        ([{"version": 0}], "line 2: version: must be a whole number from 1 to 2147483647"),
        ([{"created_at": "2001-02-03 04:05:06"}], "line 2: created_at: must be an ISO 8601"),
        ([{"url": "ftp://example.com"}], "line 2: url: "),
        ([{}, {"tutorial_id": 1, "url": None}], "lines 2 and 3 both have tutorial_id 1"),
        ([{}, {"tutorial_id": 2}], "lines 2 and 3 both have url https://example.com/x"),
    ],
)
async def test_a_bad_backup_writes_nothing(
    database: Database, dsn: str, rows: list[object], message: str
) -> None:
    good = {
        "tutorial_id": 1,
        "name": "x",
        "url": "https://example.com/x",
        "description": None,
        "tags": [],
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "version": 1,
    }
    lines = ['{"tutorials_backup":1}']
    lines += [row if isinstance(row, str) else json.dumps({**good, **row}) for row in rows]
    with pytest.raises(InvalidInput) as caught:
        await restore_file(database, io.BytesIO("\n".join(lines).encode()))
    assert caught.value.detail.startswith("the backup cannot be restored, nothing was written")
    assert message in caught.value.detail
    assert await fetch(dsn) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a backup: the file is empty"),
        (b'{"name": "an export, not a backup"}\n', "line 1: not a backup"),
    ],
)
async def test_what_is_not_a_backup_is_refused(
    database: Database, dsn: str, data: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await restore_file(database, io.BytesIO(data))
    assert await fetch(dsn) == []


async def test_a_backup_of_a_filter_restores_those_rows(database: Database, dsn: str) -> None:
    await a_catalog(database, dsn)
    out = io.BytesIO()
    assert await export_rows(database, out, format="backup", tags=["python"]) == 1
    wanted = [row for row in await fetch(dsn) if row[0] == 1]
    await service.delete_matching(database, everything=True)
    assert await restore_file(database, io.BytesIO(out.getvalue())) == 1
    assert await fetch(dsn) == wanted
