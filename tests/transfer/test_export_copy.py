"""Export through COPY: the exact bytes, one snapshot, parallel streams, timeouts, failures.

What the server writes is checked against an independent reference (PostgreSQL's CSV quoting
rules and compact JSON, written here in Python) on rows stored behind the library's back, so
the rows the API would refuse (empty strings, tags holding separators, control characters) are
covered too. A parallel export (`jobs` > 1, its threshold lowered to one row) must give the
same bytes as one stream, whatever the ids, and keep one snapshot across its connections.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from tests.support import admin_execute

from tutorials.db.session import Database
from tutorials.errors import InvalidInput
from tutorials.settings import Settings
from tutorials.transfer import ExportWriteError, export_rows, export_to, exporter, iter_export, sql

#: (name, url, description, tags): stored as given, bypassing validation.
STORED: list[tuple[str, str | None, str | None, list[str]]] = [
    ("plain", "https://example.com/1", "about it", ["python", "sql"]),
    ('Commas, "quotes" and\nnewlines', "https://example.com/a?b=1,2", "x\r\ny", ["csv"]),
    ("Unicode: café ☕ 日本語 🎉", "https://例え.jp/パス", "ünïcödé", ["ü", "日本"]),
    ("null description", "https://example.com/null", None, []),
    ("empty description", "https://example.com/empty", "", [""]),
    ("no url", None, "desc", ["a;b", "c,d", 'e"f']),
    ("Backslash \\ and tab\tinside", "https://example.com/\\x", "\\.", ["a\\b", "\\N"]),
    ("control \x01\x1f\x7f chars", "https://example.com/ctl", "bell \x07 and \b\f", ["t\tab"]),
    ("\\.", "https://example.com/dot", " padded ", [" spaced tag "]),
    ("NULL", "https://example.com/NULL", "NULL", ["NULL"]),
]


def pg_csv_field(value: str | None) -> str:
    """One field as PostgreSQL's CSV writes it: NULL bare, '' quoted, quoted when it holds a
    delimiter, a quote or a line break (quotes doubled), else as it is."""
    if value is None:
        return ""
    if value == "" or any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def reference_csv(rows: list[tuple[str, str | None, str | None, list[str]]]) -> bytes:
    lines = ["name,url,description,tags\n"]
    for name, url, description, tags in rows:
        fields = [name, url, description, ";".join(tags)]
        lines.append(",".join(pg_csv_field(field) for field in fields) + "\n")
    return "".join(lines).encode()


def reference_ndjson(rows: list[tuple[str, str | None, str | None, list[str]]]) -> bytes:
    return "".join(
        json.dumps(
            {"name": name, "url": url, "description": description, "tags": tags},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n"
        for name, url, description, tags in rows
    ).encode()


async def store(dsn: str, rows: list[tuple[str, str | None, str | None, list[str]]]) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.executemany(
            "INSERT INTO tutorials (name, url, description, tags) VALUES ($1, $2, $3, $4)", rows
        )
    finally:
        await connection.close()


def bulk(count: int, prefix: str = "r") -> list[tuple[str, str | None, str | None, list[str]]]:
    return [
        (f"{prefix} {i}", f"https://example.com/{prefix}/{i}", f'd "{i}",\nx', [f"n{i % 3}"])
        for i in range(count)
    ]


async def export_file(
    database: Database, path: Path, format: str = "csv", **options: Any
) -> tuple[int, bytes]:
    with path.open("wb") as out:
        rows = await export_rows(database, out, format=format, **options)
    return rows, await asyncio.to_thread(path.read_bytes)


@pytest.fixture
def parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split exports of any size (the real threshold is 100,000 rows per stream)."""
    monkeypatch.setattr(exporter, "PARALLEL_MIN_ROWS", 1)


# -- the exact bytes ------------------------------------------------------------------------------


async def test_csv_is_postgresql_csv_of_the_stored_rows(
    database: Database, dsn: str, tmp_path: Path
) -> None:
    await store(dsn, STORED)
    rows, data = await export_file(database, tmp_path / "out.csv")
    assert rows == len(STORED)
    assert data == reference_csv(STORED)
    # and it reads back as what is stored (NULL and '' are both empty to the csv module)
    parsed = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert parsed[1:] == [[n, u or "", d or "", ";".join(t)] for n, u, d, t in STORED]


async def test_ndjson_and_json_are_compact_json_of_the_stored_rows(
    database: Database, dsn: str, tmp_path: Path
) -> None:
    await store(dsn, STORED)
    _, data = await export_file(database, tmp_path / "out.ndjson", "ndjson")
    assert data == reference_ndjson(STORED)
    _, array = await export_file(database, tmp_path / "out.json", "json")
    assert json.loads(array) == [json.loads(line) for line in data.splitlines()]


async def test_stdout_like_sinks_get_the_same_bytes(
    database: Database, dsn: str, tmp_path: Path
) -> None:
    await store(dsn, STORED)
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(bytes(data))

    assert await export_to(database, sink, format="csv") == len(STORED)
    assert b"".join(chunks) == reference_csv(STORED)
    streamed = b"".join([chunk async for chunk in iter_export(database, format="ndjson")])
    assert streamed == reference_ndjson(STORED)


async def test_filters_pick_the_same_rows_as_before(
    database: Database, dsn: str, tmp_path: Path, parallel: None
) -> None:
    await store(
        dsn,
        [
            ("Async SQLAlchemy", None, None, ["python", "sql"]),
            ("Async Rust", None, None, ["rust"]),
            ("Python packaging", None, None, ["python"]),
        ],
    )
    _, data = await export_file(database, tmp_path / "t.ndjson", "ndjson", tags=["python"], jobs=2)
    assert [json.loads(line)["name"] for line in data.splitlines()] == [
        "Async SQLAlchemy",
        "Python packaging",
    ]
    _, data = await export_file(database, tmp_path / "q.csv", query="async", jobs=2)
    assert [row[0] for row in csv.reader(io.StringIO(data.decode()))] == [
        "name",
        "Async SQLAlchemy",
        "Async Rust",
    ]


# -- parallel streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["csv", "ndjson", "json"])
@pytest.mark.parametrize("jobs", [2, 3])
async def test_parallel_export_is_byte_for_byte_one_stream(
    database: Database,
    database_url: URL,
    dsn: str,
    tmp_path: Path,
    parallel: None,
    format: str,
    jobs: int,
) -> None:
    await store(dsn, STORED + bulk(500) + [(n, None, d, t) for n, _, d, t in STORED])
    # gaps in the ids, and a row whose id moved past the others
    await admin_execute(
        database_url,
        "DELETE FROM tutorials WHERE tutorial_id % 7 = 3 OR tutorial_id BETWEEN 100 AND 180",
        "UPDATE tutorials SET tutorial_id = 100000 WHERE tutorial_id = 2",
    )
    one_rows, one = await export_file(database, tmp_path / f"one.{format}", format)
    many_rows, many = await export_file(database, tmp_path / f"many.{format}", format, jobs=jobs)
    assert many_rows == one_rows > 300
    assert many == one
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tutorials-export-")]


async def test_parallel_export_into_a_file_with_content_before_it(
    database: Database, dsn: str, tmp_path: Path, parallel: None
) -> None:
    """The spilled parts land after what the caller wrote, and writing may go on after."""
    await store(dsn, bulk(300))
    _, alone = await export_file(database, tmp_path / "alone.csv")
    path = tmp_path / "framed.csv"
    with path.open("wb") as out:
        out.write(b"# before\n")
        assert await export_rows(database, out, jobs=2) == 300
        out.write(b"# after\n")
        assert out.tell() == len(alone) + 17
    assert await asyncio.to_thread(path.read_bytes) == b"# before\n" + alone + b"# after\n"


async def test_parallel_streams_share_one_snapshot(
    database: Database,
    database_url: URL,
    dsn: str,
    tmp_path: Path,
    parallel: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows changed (and committed) after the snapshot is taken, before the other streams
    start, appear in none of them."""
    await store(dsn, bulk(400))
    _, before = await export_file(database, tmp_path / "before.csv")
    exported = sql.export_snapshot

    async def then_change_everything(connection: asyncpg.Connection) -> str:
        snapshot = await exported(connection)
        await admin_execute(
            database_url,
            "DELETE FROM tutorials WHERE tutorial_id > 300",
            "UPDATE tutorials SET name = 'changed' WHERE tutorial_id % 2 = 0",
            "INSERT INTO tutorials (name) SELECT 'new ' || i FROM generate_series(1, 50) AS i",
        )
        return snapshot

    monkeypatch.setattr(sql, "export_snapshot", then_change_everything)
    rows, during = await export_file(database, tmp_path / "during.csv", jobs=2)
    assert rows == 400
    assert during == before
    _, after = await export_file(database, tmp_path / "after.csv")
    assert after != before and b"changed" in after


async def test_small_exports_and_other_targets_stay_one_stream(
    database: Database, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store(dsn, bulk(50))
    taken: list[str] = []
    exported = sql.export_snapshot

    async def spy(connection: asyncpg.Connection) -> str:
        taken.append("snapshot")
        return await exported(connection)

    monkeypatch.setattr(sql, "export_snapshot", spy)
    await export_file(database, tmp_path / "small.csv", jobs=4)  # below the threshold
    monkeypatch.setattr(exporter, "PARALLEL_MIN_ROWS", 1)
    await export_rows(database, io.BytesIO(), jobs=4)  # not a regular file
    await export_file(database, tmp_path / "filtered.csv", tags=["n1"], jobs=4)  # filtered
    assert taken == []
    await export_file(database, tmp_path / "big.csv", jobs=4)
    assert taken == ["snapshot"]


class FullDisk(io.BytesIO):
    """A spill file on a disk that fills up after `room` bytes."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


class FullFile(io.FileIO):
    """A regular file on a disk that fills up after `room` bytes."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "wb")
        self.room = room

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


async def test_a_full_disk_fails_the_export_as_a_write_error_and_frees_every_connection(
    database: Database, dsn: str, tmp_path: Path, parallel: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "cannot reach the database" (what a bare OSError inside a unit of work becomes)."""
    await store(dsn, bulk(3000))
    monkeypatch.setattr(exporter, "_spill_file", lambda directory: FullDisk(1000))
    with pytest.raises(ExportWriteError, match="No space left on device") as raised:
        await export_file(database, tmp_path / "out.csv", jobs=2)
    assert isinstance(raised.value.__cause__, OSError)
    open_, idle, _size = database.pool_stats()
    assert open_ == idle  # nothing in use
    with pytest.raises(ExportWriteError, match="No space left on device"):
        await export_rows(database, FullDisk(1000))  # one stream, a full output
    open_, idle, _size = database.pool_stats()
    assert open_ == idle  # nothing in use
    monkeypatch.undo()
    monkeypatch.setattr(exporter, "PARALLEL_MIN_ROWS", 1)
    full = FullFile(tmp_path / "full.csv", 1000)  # the output itself fills up
    with full, pytest.raises(ExportWriteError, match="No space left on device"):
        await export_rows(database, full, jobs=2)
    open_, idle, _size = database.pool_stats()
    assert open_ == idle  # nothing in use
    assert (await export_file(database, tmp_path / "again.csv", jobs=2))[0] == 3000


async def test_a_sink_failing_on_the_last_chunk_fails_with_its_own_error(
    database_url: URL, dsn: str
) -> None:
    """asyncpg, when a COPY sink raises on the last chunk, waits for a cancellation that never
    comes and the export ended as a lost connection (TimeoutError -> Unavailable) once the
    client timeout ran out; the sink's error comes out now, and the pool is clean."""
    await store(dsn, bulk(20))
    settings = Settings(_env_file=None, auto_migrate=False, statement_timeout_ms=200)
    database = Database.from_url(database_url, settings)
    try:

        async def refuse(data: bytes) -> None:
            raise RuntimeError("the reader went away")

        for _ in range(3):
            with pytest.raises(RuntimeError, match="the reader went away"):
                await export_to(database, refuse, format="csv")  # 20 rows: one, last, chunk
            open_, idle, _size = database.pool_stats()
            assert open_ == idle  # nothing in use
        assert await export_rows(database, io.BytesIO()) == 20
    finally:
        await database.dispose()


async def test_jobs_must_be_a_positive_whole_number(database: Database) -> None:
    for jobs in (0, -1, True, 1.5):
        with pytest.raises(InvalidInput, match="jobs"):
            await export_rows(database, io.BytesIO(), jobs=jobs)  # type: ignore[arg-type]


# -- limits ---------------------------------------------------------------------------------------


async def test_an_export_may_outlast_the_per_request_client_timeout(
    database_url: URL, dsn: str
) -> None:
    """A request's unit of work gets a client-side deadline of the statement timeout plus a
    second (here 1.2 s); an export's streams get the export's own limit instead."""
    await store(dsn, bulk(20))
    settings = Settings(_env_file=None, auto_migrate=False, statement_timeout_ms=200)
    database = Database.from_url(database_url, settings)
    try:
        chunks: list[bytes] = []

        async def slow(data: bytes) -> None:
            chunks.append(bytes(data))
            await asyncio.sleep(1.5)

        assert await export_to(database, slow, format="csv") == 20
        assert b"".join(chunks) == reference_csv(bulk(20))
    finally:
        await database.dispose()


async def test_the_export_is_read_only(database: Database, dsn: str) -> None:
    """The transaction is REPEATABLE READ, READ ONLY: one snapshot for every statement."""
    await store(dsn, bulk(3))
    seen: list[tuple[str, str]] = []
    prepare = sql.prepare_export

    async def spy(connection: Any, timeout_ms: int, **options: Any) -> None:
        await prepare(connection, timeout_ms, **options)
        row = await connection.fetchrow(
            "SELECT current_setting('transaction_isolation'), "
            "current_setting('transaction_read_only')"
        )
        assert row is not None
        seen.append((row[0], row[1]))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sql, "prepare_export", spy)
        assert await export_rows(database, io.BytesIO()) == 3
    assert seen == [("repeatable read", "on")]


async def test_iter_export_closed_early_frees_its_connection(database: Database, dsn: str) -> None:
    await store(dsn, bulk(3000))
    stream: AsyncIterator[bytes] = iter_export(database, format="csv")
    assert (await anext(stream)).startswith(b"name,url,description,tags\n")
    await stream.aclose()  # type: ignore[attr-defined]
    open_, idle, _size = database.pool_stats()
    assert open_ == idle  # nothing in use
