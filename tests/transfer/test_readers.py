"""Readers when an input breaks off: every line after the break is counted, never dropped in
silence; a bad record that does not break the input costs only itself.

Before: a CSV quote left open swallowed every line after it into one "malformed" record (or
128 KiB of them, then reading went on from the middle of the file), and the summary counted
one rejected row.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pytest

from tutorials.transfer.readers import RowError, SourceRow, read_csv, read_json


async def parsed(reader: AsyncIterator[SourceRow | RowError]) -> list[tuple[object, ...]]:
    """(kind, line, data or reason, fatal, unread) of everything a reader gives."""
    found: list[tuple[object, ...]] = []
    async for item in reader:
        if isinstance(item, RowError):
            found.append(("error", item.line, item.reason, item.fatal, item.unread))
        else:
            found.append(("row", item.line, item.data))
    return found


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


NEVER_CLOSED = "malformed CSV: a quoted field opened on this line is never closed"


@pytest.mark.parametrize("size", [3, 1 << 20])
async def test_a_quote_never_closed_counts_every_line_after_it(size: int) -> None:
    data = b'name,url\nA,https://a.io\n"B,https://b.io\nC,https://c.io\nD,https://d.io\n'
    assert await parsed(read_csv(chunked(data, size))) == [
        ("row", 2, {"name": "A", "url": "https://a.io"}),
        ("error", 3, NEVER_CLOSED, True, 2),
    ]


async def test_the_break_reports_its_own_line_as_text() -> None:
    data = b'name\nA\n"B\nC\n'
    errors = [item async for item in read_csv(io.BytesIO(data)) if isinstance(item, RowError)]
    assert [(error.line, error.text) for error in errors] == [(3, '"B')]


async def test_a_quote_never_closed_in_a_big_file_stops_there_too() -> None:
    """Past `csv`'s field limit (128 KiB) the quote is taken as never closed: the rest of the
    file is counted, not read from wherever the limit happened to fall."""
    rows = [f"row{i},https://e.com/{i}\n" for i in range(20_000)]
    data = ("name,url\nA,https://a.io\n" + '"B,https://b.io\n' + "".join(rows)).encode()
    found = await parsed(read_csv(chunked(data, 1 << 16)))
    assert found == [
        ("row", 2, {"name": "A", "url": "https://a.io"}),
        ("error", 3, NEVER_CLOSED, True, 20_000),
    ]


async def test_a_last_line_without_newline_is_counted() -> None:
    data = b'name\n"B\nC\nD'
    assert await parsed(read_csv(io.BytesIO(data))) == [("error", 2, NEVER_CLOSED, True, 2)]


async def test_a_quoted_field_over_several_lines_is_one_row() -> None:
    data = b'name,description\n"A","one\ntwo"\nB,\n'
    assert await parsed(read_csv(io.BytesIO(data))) == [
        ("row", 2, {"name": "A", "description": "one\ntwo"}),
        ("row", 4, {"name": "B", "description": None}),
    ]


async def test_a_bad_record_that_ends_costs_only_itself() -> None:
    """`"a"b` and a closed quote followed by garbage are one bad record; reading goes on."""
    data = b'name,url\n"A"x,https://a.io\n"B\nb"y,https://b.io\nC,https://c.io\n'
    found = await parsed(read_csv(io.BytesIO(data)))
    assert [item[:2] for item in found] == [("error", 2), ("error", 3), ("row", 5)]
    assert [item[3:] for item in found if item[0] == "error"] == [(False, 0), (False, 0)]


async def test_a_json_syntax_error_counts_the_lines_after_it() -> None:
    elements = [{"name": "one"}, {"name": "two"}]
    data = (json.dumps(elements, indent=1)[:-2] + '\n , {oops}\n, {"name": "x"}\n]\n').encode()
    found = await parsed(read_json(io.BytesIO(data)))
    rows = [item for item in found if item[0] == "row"]
    (error,) = [item for item in found if item[0] == "error"]
    assert len(rows) == 2
    oops = data.decode().splitlines().index(" , {oops}") + 1
    assert error == (
        "error",
        oops,
        "invalid JSON: Expecting property name enclosed in double quotes",
        True,
        2,
    )


async def test_data_after_a_json_array_is_counted() -> None:
    data = b'[{"name": "one"}]\nnot json\nneither\n'
    assert await parsed(read_json(io.BytesIO(data))) == [
        ("row", 1, {"name": "one"}),
        ("error", 2, "invalid JSON: data after the array", True, 1),
    ]
