"""Bulk import and export through the library, on a real PostgreSQL.

What matters: rows come back exactly as they went in (round trips through every format, with
the awkward characters CSV and JSON have to quote); importing twice changes nothing, versions
included; bad rows are reported with their line and reason while the good ones around them are
imported; `max_errors` stops where it says; conflicts follow `on_conflict`; and the fast
validation path accepts exactly what `TutorialCreate` accepts, producing the same values.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tests.support import run_async

from tutorials.db.session import Database
from tutorials.errors import InvalidInput
from tutorials.schemas import TutorialCreate, fast_fields
from tutorials.settings import Settings
from tutorials.transfer import (
    ImportSummary,
    RowError,
    SourceRow,
    export_rows,
    import_file,
    import_rows,
    iter_export,
    read_csv,
    read_json,
    read_ndjson,
)

Row = tuple[Any, ...]

TRICKY = [
    {
        "name": 'Commas, "quotes" and\nnewlines',
        "url": "https://example.com/a?b=1,2",
        "description": 'line one\nline two, with "quotes"\r\nand a ; semicolon',
        "tags": ["csv", "edge case"],
    },
    {
        "name": "Unicode: café ☕ 日本語 🎉",
        "url": "https://xn--r8jz45g.jp/%E3%83%91%E3%82%B9",
        "description": "ünïcödé",
        "tags": ["日本語", "🐍 python"],
    },
    {"name": "No url, no description", "tags": ["plain"]},
    {"name": "Empty tags", "url": "http://example.org/empty", "description": None, "tags": []},
    {"name": "Backslash \\ and tab\tinside", "url": "https://example.com/%5Cx", "tags": ["a\\b"]},
    {"name": "   padded name   ", "url": "HTTPS://Example.com/Case", "tags": ["Upper", "upper"]},
]


async def table(dsn: str) -> list[Row]:
    """Every stored row, everything that must survive: ids, content, version, timestamps."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT tutorial_id, name, url, description, tags, version, created_at, updated_at "
            "FROM tutorials ORDER BY tutorial_id"
        )
    finally:
        await connection.close()
    return [tuple(row) for row in rows]


async def content(dsn: str) -> list[Row]:
    """The content alone (what a round trip must keep), in id order."""
    return [row[1:5] for row in await table(dsn)]


async def execute(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def import_text(
    database: Database, text: str | bytes, format: str, **options: Any
) -> ImportSummary:
    data = text.encode() if isinstance(text, str) else text
    return await import_file(database, io.BytesIO(data), format=format, **options)


async def export_text(database: Database, format: str, **options: Any) -> str:
    out = io.BytesIO()
    await export_rows(database, out, format=format, **options)
    return out.getvalue().decode()


def expected(rows: list[dict[str, Any]]) -> list[Row]:
    """What the catalog stores for these rows (validated the API's way)."""
    result = []
    for row in rows:
        model = TutorialCreate.model_validate(row)
        result.append((model.name, model.url, model.description, model.tags))
    return result


def ndjson(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def csv_of(rows: list[dict[str, Any]]) -> str:
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "url", "description", "tags"])
    for row in rows:
        writer.writerow(
            [
                row["name"],
                row.get("url") or "",
                row.get("description") or "",
                ";".join(row.get("tags", [])),
            ]
        )
    return out.getvalue()


def many(count: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [
        {
            "name": f"{prefix} {i}",
            "url": f"https://example.com/{prefix}/{i}",
            "description": f"about {i}",
            "tags": ["bulk", f"n{i % 7}"],
        }
        for i in range(count)
    ]


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["csv", "ndjson", "json"])
async def test_round_trip_keeps_every_field(database: Database, dsn: str, format: str) -> None:
    source = csv_of(TRICKY) if format == "csv" else ndjson(TRICKY)
    if format == "json":
        source = json.dumps(TRICKY, indent=2, ensure_ascii=False)
    summary = await import_text(database, source, format)
    assert summary.inserted == len(TRICKY) and summary.rejected == 0, summary.errors
    assert await content(dsn) == expected(TRICKY)

    exported = await export_text(database, format)
    await execute(dsn, "TRUNCATE tutorials")
    again = await import_text(database, exported, format)
    assert again.inserted == len(TRICKY), again.errors
    assert await content(dsn) == expected(TRICKY)
    assert await export_text(database, format) == exported  # byte for byte, ids in file order


async def test_csv_export_has_the_import_header_and_semicolon_tags(database: Database) -> None:
    await import_rows(database, TRICKY[:1])
    exported = await export_text(database, "csv")
    assert exported.splitlines()[0] == "name,url,description,tags"
    assert "csv;edge case" in exported


async def test_formats_carry_the_same_rows(database: Database, dsn: str) -> None:
    await import_rows(database, TRICKY)
    as_ndjson = [json.loads(line) for line in (await export_text(database, "ndjson")).splitlines()]
    as_json = json.loads(await export_text(database, "json"))
    assert as_ndjson == as_json
    assert [(r["name"], r["url"], r["description"], r["tags"]) for r in as_json] == expected(TRICKY)


async def test_export_of_nothing(database: Database) -> None:
    assert json.loads(await export_text(database, "json")) == []
    assert await export_text(database, "ndjson") == ""
    assert await export_text(database, "csv") == "name,url,description,tags\n"


async def test_export_filters_by_tags_and_query(database: Database) -> None:
    await import_rows(
        database,
        [
            {"name": "Async SQLAlchemy", "tags": ["python", "sql"]},
            {"name": "Async Rust", "tags": ["rust"]},
            {"name": "Python packaging", "tags": ["python"]},
        ],
    )
    by_tag = [r["name"] for r in json.loads(await export_text(database, "json", tags=["Python"]))]
    assert by_tag == ["Async SQLAlchemy", "Python packaging"]
    by_query = [r["name"] for r in json.loads(await export_text(database, "json", query="async"))]
    assert by_query == ["Async SQLAlchemy", "Async Rust"]
    both = json.loads(await export_text(database, "json", tags=["python"], query="async"))
    assert [r["name"] for r in both] == ["Async SQLAlchemy"]


async def test_export_refuses_bad_arguments_before_any_output(database: Database) -> None:
    with pytest.raises(InvalidInput):
        iter_export(database, format="xml")
    with pytest.raises(InvalidInput):
        iter_export(database, query="   ")
    with pytest.raises(InvalidInput):
        iter_export(database, tags=["a;b"])


async def test_iter_export_streams_chunks_and_can_stop_early(database: Database) -> None:
    await import_rows(database, many(3000))
    chunks = [chunk async for chunk in iter_export(database, format="ndjson")]
    assert len(b"".join(chunks).splitlines()) == 3000
    stream = iter_export(database, format="csv")
    assert isinstance(stream, AsyncIterator)
    first = await anext(stream)
    assert first.startswith(b"name,url,description,tags")
    await stream.aclose()  # cancels the COPY; the pool gets its connection back
    assert len((await export_text(database, "csv")).splitlines()) == 3001


async def test_refuses_anything_but_a_database(database: Database) -> None:
    with pytest.raises(TypeError, match="expected a tutorials Database, not AsyncEngine"):
        await import_rows(database.engine, TRICKY[:2])  # type: ignore[arg-type]


# -- fields the input does not give ------------------------------------------------------------


async def _stored(dsn: str, url: str) -> tuple[Any, ...]:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT name, description, tags, version FROM tutorials WHERE url = $1", url
        )
    finally:
        await connection.close()
    assert row is not None
    return tuple(row)


async def test_a_field_the_input_does_not_give_is_left_as_stored(
    database: Database, dsn: str
) -> None:
    url = "https://keep.io/"
    await import_rows(database, [{"name": "n", "url": url, "description": "d", "tags": ["a"]}])
    csv_without = await import_text(database, f"name,url\nrenamed,{url}\n", "csv")
    assert (csv_without.updated, csv_without.rejected) == (1, 0)
    assert await _stored(dsn, url) == ("renamed", "d", ["a"], 2)
    same_again = await import_text(database, f"name,url\nrenamed,{url}\n", "csv")
    assert same_again.unchanged == 1
    ndjson_without = await import_text(database, f'{{"name": "again", "url": "{url}"}}', "ndjson")
    assert ndjson_without.updated == 1
    assert await _stored(dsn, url) == ("again", "d", ["a"], 3)
    only_tags = await import_rows(database, [{"name": "again", "url": url, "tags": ["b"]}])
    assert only_tags.updated == 1
    assert await _stored(dsn, url) == ("again", "d", ["b"], 4)


async def test_a_field_given_empty_clears_it(database: Database, dsn: str) -> None:
    url = "https://clear.io/"
    await import_rows(database, [{"name": "n", "url": url, "description": "d", "tags": ["a"]}])
    cleared = await import_text(database, f"name,url,description,tags\nn,{url},,\n", "csv")
    assert cleared.updated == 1
    assert await _stored(dsn, url) == ("n", None, [], 2)
    await import_rows(database, [{"name": "n", "url": url, "description": "d", "tags": ["a"]}])
    nulls = await import_text(
        database, f'{{"name": "n", "url": "{url}", "description": null, "tags": []}}', "ndjson"
    )
    assert nulls.updated == 1
    assert await _stored(dsn, url) == ("n", None, [], 4)


async def test_a_new_tutorial_without_those_fields_gets_none(database: Database, dsn: str) -> None:
    summary = await import_text(database, "name,url\nfresh,https://fresh.io/\n", "csv")
    assert summary.inserted == 1
    assert await _stored(dsn, "https://fresh.io/") == ("fresh", None, [], 1)


# -- idempotence -----------------------------------------------------------------------------


async def test_importing_twice_leaves_the_same_table(database: Database, dsn: str) -> None:
    rows = [*many(50), *TRICKY]
    first = await import_rows(database, rows, batch_size=7)
    assert first.inserted == len(rows)
    before = await table(dsn)
    second = await import_rows(database, rows, batch_size=7)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, len(rows))
    assert await table(dsn) == before  # ids, versions and timestamps included


async def test_rows_without_url_are_matched_on_their_whole_content(
    database: Database, dsn: str
) -> None:
    rows = [
        {"name": "Same", "description": "d", "tags": ["a"]},
        {"name": "Same", "description": None, "tags": ["a"]},  # differs: no description
        {"name": "Same", "description": "d", "tags": ["a", "b"]},  # differs: tags
        {"name": "Same", "description": "d", "tags": ["A"]},  # the first, once normalised
    ]
    summary = await import_rows(database, rows)
    assert (summary.inserted, summary.duplicates) == (3, 1)
    again = await import_rows(database, rows, batch_size=1)
    assert (again.inserted, again.unchanged) == (0, 4)
    assert len(await table(dsn)) == 3


def test_a_url_less_row_deleted_meanwhile_is_not_a_match(database_url: Any, dsn: str) -> None:
    """The run keeps stored url-less rows' keys; a candidate is confirmed by primary key, so a
    row deleted (or changed) after the keys were read is not taken for a match."""
    loose = {"name": "loose", "description": "d", "tags": ["x"]}
    rows = [loose, {"name": "a"}, {"name": "b"}, {"name": "c"}, loose]
    deleted: list[int] = []

    def between_batches(summary: ImportSummary) -> None:
        if summary.rows == 2 and not deleted:  # after the first batch committed
            deleted.append(1)
            run_async(lambda: execute(dsn, "DELETE FROM tutorials WHERE name = 'loose'"))

    async def main() -> ImportSummary:
        database = Database.from_url(database_url, Settings(_env_file=None))  # type: ignore[call-arg]
        try:
            return await import_rows(database, rows, batch_size=2, on_progress=between_batches)
        finally:
            await database.dispose()

    summary = run_async(main)
    assert deleted == [1]
    # the first batch's "loose" was deleted: the last row is new again, not a match
    assert (summary.inserted, summary.unchanged) == (5, 0)
    names = [row[1] for row in run_async(lambda: table(dsn))]
    assert names == ["a", "b", "c", "loose"]


async def test_update_changes_only_what_differs_and_bumps_the_version(
    database: Database, dsn: str
) -> None:
    await import_rows(database, many(5))
    changed = many(5)
    changed[2]["description"] = "new text"
    changed.append({"name": "brand new", "url": "https://example.com/new"})
    summary = await import_rows(database, changed)
    assert (summary.inserted, summary.updated, summary.unchanged) == (1, 1, 4)
    rows = await table(dsn)
    assert [row[5] for row in rows] == [1, 1, 2, 1, 1, 1]
    assert rows[2][3] == "new text" and rows[2][7] > rows[2][6]


async def test_skip_leaves_stored_rows_alone(database: Database, dsn: str) -> None:
    await import_rows(database, many(3))
    changed = [dict(row, description="changed") for row in many(4)]
    summary = await import_rows(database, changed, on_conflict="skip")
    assert (summary.inserted, summary.skipped, summary.updated) == (1, 3, 0)
    assert [row[3] for row in await table(dsn)] == ["about 0", "about 1", "about 2", "changed"]


async def test_error_mode_rejects_conflicting_rows_and_imports_the_rest(
    database: Database, dsn: str
) -> None:
    await import_rows(database, [*many(2), {"name": "loose"}])
    rows = [
        *many(4),
        {"name": "loose"},
        {"name": "fresh", "url": "https://example.com/fresh"},
    ]
    summary = await import_text(database, ndjson(rows), "ndjson", on_conflict="error")
    assert (summary.inserted, summary.rejected) == (3, 3)
    assert [(e.line, e.reason) for e in summary.errors] == [
        (1, "a tutorial with this url already exists"),
        (2, "a tutorial with this url already exists"),
        (5, "an identical tutorial without url already exists"),
    ]
    assert summary.errors[0].text == json.dumps(rows[0], ensure_ascii=False)
    assert len(await table(dsn)) == 6


@pytest.mark.parametrize(
    ("mode", "kept", "counts"),
    [
        ("update", "third", {"inserted": 1, "duplicates": 2, "rejected": 0}),
        ("skip", "first", {"inserted": 1, "duplicates": 2, "rejected": 0}),
        ("error", "first", {"inserted": 1, "duplicates": 0, "rejected": 2}),
    ],
)
async def test_the_same_url_twice_in_one_batch(
    database: Database, dsn: str, mode: str, kept: str, counts: dict[str, int]
) -> None:
    rows = [
        {"name": name, "url": "https://example.com/same"} for name in ("first", "second", "third")
    ]
    summary = await import_rows(database, rows, on_conflict=mode)  # type: ignore[arg-type]
    assert {key: getattr(summary, key) for key in counts} == counts
    assert [row[1] for row in await table(dsn)] == [kept]
    if mode == "error":
        assert [e.reason for e in summary.errors] == [
            "duplicate url: already at line 1 of this input"
        ] * 2


async def test_later_batches_fall_back_when_urls_exist(database: Database, dsn: str) -> None:
    """The fast path (COPY into the table) meets stored urls and the batch is redone safely."""
    await import_rows(database, many(10)[3:6])
    summary = await import_rows(database, many(10), batch_size=2)
    assert (summary.inserted, summary.unchanged) == (7, 3)
    assert [row[1] for row in await table(dsn)][3:] == [f"t {i}" for i in (0, 1, 2, 6, 7, 8, 9)]


async def test_concurrent_imports_of_overlapping_rows(database: Database, dsn: str) -> None:
    rows = [*many(300), *({"name": f"loose {i}"} for i in range(100))]
    results = await asyncio.gather(
        import_rows(database, rows, batch_size=50),
        import_rows(database, list(reversed(rows)), batch_size=50),
        import_rows(database, rows[100:], batch_size=50),
    )
    assert all(result.rejected == 0 for result in results)
    assert sum(result.inserted for result in results) == 400
    stored = await table(dsn)
    assert len(stored) == 400
    assert len({row[1] for row in stored}) == 400
    assert {row[5] for row in stored} == {1}


# -- bad rows ------------------------------------------------------------------------------------

BROKEN_CSV = (
    "name,url,description,tags\n"  # 1
    "good one,https://example.com/1,,a;b\n"  # 2
    'multi,https://example.com/2,"spans\ntwo lines",\n'  # 3-4
    "bad url,ftp://example.com/3,,\n"  # 5
    "too,many,fields,here,extra\n"  # 6
    ",https://example.com/6,blank name,\n"  # 7
    'bad quote,https://example.com/7,"oops"x,\n'  # 8
    "bad tag,https://example.com/8,,a;;b\n"  # 9
    "nul\x00,https://example.com/9,,\n"  # 10
    "good two,https://example.com/10,,\n"  # 11
)


async def test_broken_csv_rows_are_reported_with_their_lines(database: Database, dsn: str) -> None:
    summary = await import_text(database, BROKEN_CSV, "csv")
    assert summary.inserted == 3
    reasons = {error.line: error.reason for error in summary.errors}
    assert sorted(reasons) == [5, 6, 7, 8, 9, 10]
    assert "url" in reasons[5] and "http" in reasons[5]
    assert reasons[6] == "expected 4 fields, found 5"
    assert reasons[7].startswith("name:")
    assert reasons[8].startswith("malformed CSV")
    assert reasons[9].startswith("tags.1:")
    assert "NUL" in reasons[10]
    assert summary.errors[0].text == "bad url,ftp://example.com/3,,"
    assert [row[1] for row in await table(dsn)] == ["good one", "multi", "good two"]
    assert summary.rows == 9


async def test_invalid_utf8_rejects_only_its_row(database: Database, dsn: str) -> None:
    data = b"name,url\nok,https://a.io\nbad \xff byte,https://b.io\nfine,https://c.io\n"
    summary = await import_text(database, data, "csv")
    assert summary.inserted == 2
    assert [error.line for error in summary.errors] == [3]
    assert summary.errors[0].reason.startswith("name:")
    assert "unicode" in summary.errors[0].reason.lower()


async def test_broken_ndjson_lines(database: Database, dsn: str) -> None:
    data = (
        '{"name": "one"}\n'
        "\n"
        '{"name": "two", \n'
        "[1, 2]\n"
        '{"name": "three", "url": "javascript:alert(1)"}\n'
        '{"name": "four", "tutorial_id": 5}\n'
        '{"name": "five"}'
    )
    summary = await import_text(database, data, "ndjson")
    assert summary.inserted == 2
    reasons = {error.line: error.reason for error in summary.errors}
    assert sorted(reasons) == [3, 4, 5, 6]
    assert reasons[3].startswith("invalid JSON")
    assert reasons[4] == "expected a JSON object"
    assert reasons[5].startswith("url:")
    assert reasons[6].startswith("tutorial_id:")


async def test_json_array_bad_elements_and_a_syntax_error(database: Database, dsn: str) -> None:
    data = (
        '[\n  {"name": "one"},\n  "not an object",\n  {"name": ""},\n'
        '  {"name": "two"},\n  {oops}\n, {"name": "never"}]'
    )
    summary = await import_text(database, data, "json")
    assert summary.inserted == 2
    assert [(e.line, e.fatal) for e in summary.errors] == [(3, False), (4, False), (6, True)]
    assert summary.stopped is not None and "line 6" in summary.stopped
    assert [row[1] for row in await table(dsn)] == ["one", "two"]


async def test_json_must_be_an_array(database: Database) -> None:
    with pytest.raises(InvalidInput, match="JSON array"):
        await import_text(database, '{"name": "x"}', "json")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("name,colour\n", "unknown CSV column 'colour'"),
        ("url,description\n", "no 'name' column"),
        ("name,name\n", "twice"),
    ],
)
async def test_a_bad_csv_header_is_refused_before_any_row(
    database: Database, dsn: str, header: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await import_text(database, header + "a,b\n", "csv")
    assert await table(dsn) == []


async def test_csv_columns_in_any_order_and_subset(database: Database, dsn: str) -> None:
    data = "\ufefftags, Name ,url\nX;y,First,https://a.io\n,Second,\n"
    summary = await import_text(database, data, "csv")
    assert summary.inserted == 2
    assert await content(dsn) == [
        ("First", "https://a.io/", None, ["x", "y"]),
        ("Second", None, None, []),
    ]


async def test_max_errors_stops_after_the_limit(database: Database, dsn: str) -> None:
    rows = [{"name": f"ok {i}"} if i % 3 else {"name": ""} for i in range(1, 31)]
    seen: list[RowError] = []
    summary = await import_rows(database, rows, max_errors=2, batch_size=4, on_error=seen.append)
    # rejected rows are 3, 6, 9: the third one stops the run; rows 1..8 good ones are in
    assert summary.rejected == 3 and [e.line for e in seen] == [3, 6, 9]
    assert summary.stopped == "more than 2 rows rejected"
    assert [row[1] for row in await table(dsn)] == [f"ok {i}" for i in (1, 2, 4, 5, 7, 8)]


async def test_max_errors_zero_stops_at_the_first(database: Database, dsn: str) -> None:
    summary = await import_text(database, BROKEN_CSV, "csv", max_errors=0)
    assert summary.rejected == 1 and summary.errors[0].line == 5
    assert [row[1] for row in await table(dsn)] == ["good one", "multi"]


async def test_a_row_the_database_refuses_is_isolated(database: Database, dsn: str) -> None:
    """A constraint validation does not know: the batch is split until the row is found."""
    await execute(dsn, "ALTER TABLE tutorials ADD CONSTRAINT no_evil CHECK (name <> 'evil')")
    rows = [*many(9)[:4], {"name": "evil", "url": "https://evil.example"}, *many(9)[4:]]
    summary = await import_rows(database, rows, batch_size=100)
    assert summary.inserted == 9 and summary.rejected == 1
    assert summary.errors[0].line == 5
    assert summary.errors[0].reason.startswith("refused by the database")
    assert len(await table(dsn)) == 9


async def test_progress_is_reported_after_each_batch(database: Database) -> None:
    seen: list[int] = []
    summary = await import_rows(
        database, many(25), batch_size=10, on_progress=lambda s: seen.append(s.rows)
    )
    assert seen == [10, 20, 25] and summary.rows == 25


async def test_bad_arguments(database: Database) -> None:
    with pytest.raises(InvalidInput, match="on_conflict"):
        await import_rows(database, [], on_conflict="merge")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="batch_size"):
        await import_rows(database, [], batch_size=0)
    with pytest.raises(InvalidInput, match="format"):
        await import_text(database, "", "xml")


# -- readers -------------------------------------------------------------------------------------


async def collect(reader: AsyncIterator[SourceRow | RowError]) -> list[SourceRow | RowError]:
    return [item async for item in reader]


async def tiny_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [1, 2, 7, 64])
async def test_readers_do_not_care_where_chunks_end(size: int) -> None:
    text = csv_of(TRICKY) + "bad,row\n"
    data = text.encode()
    whole = await collect(read_csv(io.BytesIO(data)))
    assert await collect(read_csv(tiny_chunks(data, size))) == whole
    as_json = json.dumps([*TRICKY, 5], indent=1, ensure_ascii=False).encode()
    assert await collect(read_json(tiny_chunks(as_json, size))) == await collect(
        read_json(io.BytesIO(as_json))
    )
    lines = ndjson(TRICKY).encode() + b"{broken\n"
    assert await collect(read_ndjson(tiny_chunks(lines, size))) == await collect(
        read_ndjson(io.BytesIO(lines))
    )


async def test_line_numbers_count_physical_lines() -> None:
    data = b'name,description\n"a","x\ny\nz"\nb,\n\nc,\n'
    rows = await collect(read_csv(io.BytesIO(data)))
    assert [row.line for row in rows] == [2, 5, 7]
    pretty = json.dumps([{"name": "a", "tags": ["x", "y"]}, {"name": "b"}], indent=2).encode()
    assert [row.line for row in await collect(read_json(io.BytesIO(pretty)))] == [2, 9]


async def test_an_overlong_line_is_rejected_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from tutorials.transfer import readers

    monkeypatch.setattr(readers, "MAX_LINE", 100)
    monkeypatch.setattr(readers, "CHUNK", 16)
    data = b'{"name": "a"}\n{"name": "' + b"x" * 500 + b'"}\n{"name": "b"}\n'
    rows = await collect(read_ndjson(io.BytesIO(data)))
    assert [type(row).__name__ for row in rows] == ["SourceRow", "RowError", "SourceRow"]
    assert [row.line for row in rows] == [1, 2, 3]
    assert isinstance(rows[1], RowError) and "longer than 100" in rows[1].reason


# -- the fast validation path --------------------------------------------------------------------

CORPUS: list[object] = [
    {"name": "plain", "url": "https://example.com/a?b=c#d", "description": "x", "tags": ["a"]},
    {"name": "  spaced  ", "url": "http://a.b:8080/", "tags": ["A", "a", " a "]},
    {"name": "x" * 255},
    {"name": "x" * 256},
    {"name": " " + "x" * 255 + " "},
    {"name": "x" * 1021},
    {"name": ""},
    {"name": " \t\n"},
    {"name": "nul\x00"},
    {"name": "surrogate \ud800"},
    {"name": 5},
    {"name": b"bytes"},
    {"name": "ok", "extra": 1},
    {"url": "https://a.io"},
    {"name": "ok", "url": "HTTPS://a.io"},
    {"name": "ok", "url": "https://"},
    {"name": "ok", "url": "https://a.io/ space"},
    {"name": "ok", "url": " https://a.io"},
    {"name": "ok", "url": "https://[::1]/"},
    {"name": "ok", "url": "https://[::1/"},
    {"name": "ok", "url": "https://user@host/"},
    {"name": "ok", "url": "https://a.io:99999999/"},
    {"name": "ok", "url": "https://a.io:/"},
    {"name": "ok", "url": "https://a.io/\x7f"},
    {"name": "ok", "url": "https://a.io/" + "x" * 2100},
    {"name": "ok", "url": "https://é.io/"},
    {"name": "ok", "url": "ftp://a.io"},
    {"name": "ok", "url": ""},
    {"name": "ok", "url": None, "description": None, "tags": []},
    {"name": "ok", "description": "x" * 20_001},
    {"name": "ok", "description": "ünïcödé \x01 control"},
    {"name": "ok", "description": "nul\x00"},
    {"name": "ok", "tags": ["a;b"]},
    {"name": "ok", "tags": ["a,b"]},
    {"name": "ok", "tags": [""]},
    {"name": "ok", "tags": [" "]},
    {"name": "ok", "tags": ["tab\t"]},
    {"name": "ok", "tags": ["x" * 64]},
    {"name": "ok", "tags": ["x" * 65]},
    {"name": "ok", "tags": [f"t{i}" for i in range(50)]},
    {"name": "ok", "tags": [f"t{i}" for i in range(51)]},
    {"name": "ok", "tags": ["t"] * 51},
    {"name": "ok", "tags": ("a", "b")},
    {"name": "ok", "tags": "abc"},
    {"name": "ok", "tags": [1]},
    {"name": "ok", "tags": ["C++", "c#", "Node.js", "a b"]},
    {"name": "ok", "tags": ["ÉTÉ"]},
    ["not", "a", "dict"],
    "string",
]


def slow_fields(data: object) -> tuple[Any, ...] | None:
    try:
        model = TutorialCreate.model_validate(data)
    except ValidationError:
        return None
    return (model.name, model.url, model.description, model.tags)


def check_same(data: object) -> None:
    fast = fast_fields(data)
    if fast is not None:
        assert fast == slow_fields(data), data


@pytest.mark.parametrize("data", CORPUS)
def test_fast_path_agrees_with_the_model(data: object) -> None:
    check_same(data)


def test_fast_path_takes_the_common_rows() -> None:
    """It must actually be used, or it buys nothing."""
    assert fast_fields(CORPUS[0]) is not None
    assert fast_fields({"name": " padded ", "url": "HTTP://A.b:80", "tags": ["A", "a"]}) == (
        "padded",
        "http://a.b/",
        None,
        ["a"],
    )
    assert all(fast_fields(row) is not None for row in many(20))


_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=()) | st.sampled_from(" ,;:/?#@[]"),
    max_size=30,
)
_urlish = st.builds(
    lambda scheme, host, rest: f"{scheme}://{host}{rest}",
    st.sampled_from(["http", "https", "HTTP", "ftp", "Https"]),
    st.text(alphabet="abc.-:[]@é 1", max_size=12),
    st.text(alphabet="/?#:abc %\\x\x7f\t", max_size=12),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    name=_text,
    url=st.none() | _urlish | _text,
    description=st.none() | _text,
    tags=st.lists(_text | st.sampled_from(["Python", "sql", " x ", "a b"]), max_size=5),
)
def test_fast_path_agrees_on_random_rows(
    name: str, url: str | None, description: str | None, tags: list[str]
) -> None:
    check_same({"name": name, "url": url, "description": description, "tags": tags})


async def test_duplicate_keys_and_deep_nesting_are_refused_per_row(database: Database) -> None:
    deep = "[" * 5000 + "]" * 5000
    ndjson_body = '{"name": "a"}\n{"name": "x", "name": "y"}\n' + deep + '\n{"name": "b"}\n'
    summary = await import_text(database, ndjson_body, "ndjson")
    assert summary.inserted == 2
    assert [(e.line, e.reason) for e in summary.errors] == [
        (2, "duplicate key 'name' in the JSON object"),
        (3, "invalid JSON: nested too deeply"),
    ]
    array = '[{"name": "c"},\n {"name": "x", "url": null, "url": null},\n {"name": "d"}]'
    summary = await import_text(database, array, "json")
    assert summary.inserted == 2 and summary.stopped is None  # reading went on past it
    assert [(e.line, e.reason) for e in summary.errors] == [
        (2, "duplicate key 'url' in the JSON object")
    ]
    summary = await import_text(database, '[{"name": "e"}, ' + deep + "]", "json")
    assert summary.inserted == 1 and summary.errors[0].fatal
    assert summary.errors[0].reason == "invalid JSON: nested too deeply"
