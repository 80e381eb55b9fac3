"""`POST /tutorials/import` and `GET /tutorials/export` on the real app and a real database.

The library's rules are tested in tests/test_transfer.py; here: what HTTP adds — content types
(415), a CSV header checked before anything is read (400, problem+json), a summary as JSON with
the rejected rows' lines, bodies streamed in chunks, writes behind the token, exports streamed
with the right media type that read back through the import unchanged, and 503 for a database
that is down.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from tests.api.conftest import ClientFactory
from tests.api.helpers import fetch_rows

from tutorials.api import create_app
from tutorials.api.transfer import CSV_HEADER_PATTERN, _headers
from tutorials.db.session import Database
from tutorials.schemas import compile_pattern
from tutorials.settings import Settings

PROBLEM = "application/problem+json"
NDJSON = {"content-type": "application/x-ndjson"}
CSV = {"content-type": "text/csv"}


def lines(*rows: dict[str, object]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


ROWS = [
    {"name": "Async SQLAlchemy", "url": "https://a.io/1", "tags": ["python", "sql"]},
    {"name": 'Quotes " and, commas', "url": "https://a.io/2", "description": "two\nlines"},
    {"name": "No url", "description": "ünïcödé ☕", "tags": ["misc"]},
]


async def test_import_ndjson_then_again(client: httpx.AsyncClient, dsn: str) -> None:
    response = await client.post("/tutorials/import", content=lines(*ROWS), headers=NDJSON)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    summary = response.json()
    assert (summary["inserted"], summary["rejected"], summary["errors"]) == (3, 0, [])
    again = (await client.post("/tutorials/import", content=lines(*ROWS), headers=NDJSON)).json()
    assert (again["inserted"], again["unchanged"]) == (0, 3)
    stored = await fetch_rows(dsn)
    assert [row["name"] for row in stored] == [row["name"] for row in ROWS]
    assert {row["version"] for row in stored} == {1}


async def test_import_csv_reports_bad_rows_by_line(client: httpx.AsyncClient, dsn: str) -> None:
    body = (
        "name,url,tags\n"
        "ok,https://a.io/ok,x;y\n"
        "bad url,mailto:someone@a.io,\n"
        '"quoted, ""multi\nline""",https://a.io/q,\n'
        ",https://a.io/blank,\n"
    )
    response = await client.post("/tutorials/import", content=body, headers=CSV)
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["inserted"] == 2
    assert [(e["line"], e["reason"].split(":")[0]) for e in summary["errors"]] == [
        (3, "url"),
        (6, "name"),
    ]
    assert summary["errors"][0]["text"] == "bad url,mailto:someone@a.io,"
    assert [row["name"] for row in await fetch_rows(dsn)] == ["ok", 'quoted, "multi\nline"']


async def test_options_on_conflict_and_max_errors(client: httpx.AsyncClient, dsn: str) -> None:
    await client.post("/tutorials/import", content=lines(*ROWS), headers=NDJSON)
    changed = [dict(row, description="changed") for row in ROWS[:2]]
    response = await client.post(
        "/tutorials/import", params={"on_conflict": "skip"}, content=lines(*changed), headers=NDJSON
    )
    assert response.json()["skipped"] == 2
    response = await client.post(
        "/tutorials/import",
        params={"on_conflict": "error", "max_errors": "0"},
        content=lines(*changed, {"name": "after"}),
        headers=NDJSON,
    )
    summary = response.json()
    assert response.status_code == 200
    # conflicts are found by the database, a batch at a time: this batch's both are reported,
    # its new row is in, and the run stops there
    assert summary["rejected"] == 2 and summary["stopped"] == "more than 0 rows rejected"
    assert summary["errors"][0]["reason"] == "a tutorial with this url already exists"
    stored = await fetch_rows(dsn)
    assert "changed" not in {row["description"] for row in stored}
    assert "after" in {row["name"] for row in stored}


@pytest.mark.parametrize(
    ("params", "field"),
    [({"on_conflict": "merge"}, "on_conflict"), ({"max_errors": "-1"}, "max_errors")],
)
async def test_bad_options_are_422(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.post("/tutorials/import", params=params, content="", headers=NDJSON)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["errors"][0]["loc"] == ["query", field]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/plain", "text/csv; charset=latin-1", None],
)
async def test_other_content_types_are_415(
    client: httpx.AsyncClient, dsn: str, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/tutorials/import", content="name\nx\n", headers=headers)
    assert response.status_code == 415
    assert response.headers["content-type"] == PROBLEM
    assert "text/csv" in response.headers["accept-post"]
    assert await fetch_rows(dsn) == []


@pytest.mark.parametrize(
    "body",
    ["", "title,url\nx,y\n", "Name\nx\n", "name,name\n", "url\nhttps://a.io\n", "name\rx\n"],
)
async def test_a_csv_body_without_a_valid_header_is_400(
    client: httpx.AsyncClient, dsn: str, body: str
) -> None:
    response = await client.post("/tutorials/import", content=body, headers=CSV)
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    assert "header" in response.json()["detail"]
    assert await fetch_rows(dsn) == []


def test_the_published_header_pattern_is_what_the_reader_takes() -> None:
    pattern = compile_pattern(CSV_HEADER_PATTERN)
    assert len(_headers()) == 49  # name, plus any of 3 others, in any order
    for header in _headers():
        assert pattern.search(header + "\n") and pattern.search("\ufeff" + header + "\r\nrow")
        assert pattern.search(header)
    for bad in ("name,", "name, url\n", "NAME\n", "url,name,url\n", "namex\n", "name\rx"):
        assert not pattern.search(bad), bad


async def test_a_body_streamed_in_chunks(
    settings: Settings, database: Database, dsn: str, make_client: ClientFactory
) -> None:
    """A chunked upload larger than the JSON body limit (1 MiB), read as it arrives."""
    count = 20_000

    async def body() -> AsyncIterator[bytes]:
        yield b"name,url,description,tags\n"
        for start in range(0, count, 1000):
            yield "".join(
                f"Tutorial {i},https://a.io/{i},about {i},t{i % 3}\n"
                for i in range(start, start + 1000)
            ).encode()

    app = create_app(settings, database)
    async with make_client(app) as client:
        response = await client.post("/tutorials/import", content=body(), headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == count
    assert len(await fetch_rows(dsn)) == count


async def test_an_import_over_its_own_limit_is_413_before_reading(
    settings: Settings, database: Database, dsn: str, make_client: ClientFactory
) -> None:
    """Imports have a limit of their own (max_import_bytes), far above max_body_bytes."""
    app = create_app(settings.model_copy(update={"max_import_bytes": 1000}), database)
    body = "name,url,description,tags\n" + "".join(f"T{i},,,\n" for i in range(200))
    async with make_client(app) as client:
        response = await client.post("/tutorials/import", content=body, headers=CSV)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert "1000" in response.json()["detail"]
    assert await fetch_rows(dsn) == []


async def test_import_needs_the_token_when_tokens_are_set(
    settings: Settings, database: Database, dsn: str, make_client: ClientFactory
) -> None:
    app = create_app(settings.model_copy(update={"api_tokens": [SecretStr("s3cret")]}), database)
    async with make_client(app) as client:
        refused = await client.post("/tutorials/import", content=lines(*ROWS), headers=NDJSON)
        exported = await client.get("/tutorials/export")
        allowed = await client.post(
            "/tutorials/import",
            content=lines(*ROWS),
            headers={**NDJSON, "authorization": "Bearer s3cret"},
        )
    assert refused.status_code == 401
    assert exported.status_code == 200  # reads stay open
    assert allowed.status_code == 200
    assert len(await fetch_rows(dsn)) == 3


@pytest.mark.parametrize(
    ("format", "media_type"),
    [("csv", "text/csv; charset=utf-8"), ("ndjson", "application/x-ndjson")],
)
async def test_export_round_trips_through_import(
    client: httpx.AsyncClient, dsn: str, format: str, media_type: str
) -> None:
    await client.post("/tutorials/import", content=lines(*ROWS), headers=NDJSON)
    before = [(r["name"], r["url"], r["description"], r["tags"]) for r in await fetch_rows(dsn)]
    exported = await client.get("/tutorials/export", params={"format": format})
    assert exported.status_code == 200
    assert exported.headers["content-type"] == media_type
    assert f'filename="tutorials.{format}"' in exported.headers["content-disposition"]
    import asyncpg

    connection = await asyncpg.connect(dsn)
    await connection.execute("TRUNCATE tutorials")
    await connection.close()
    content_type = {"content-type": media_type.split(";")[0]}
    again = await client.post("/tutorials/import", content=exported.content, headers=content_type)
    assert again.json()["inserted"] == 3, again.text
    after = [(r["name"], r["url"], r["description"], r["tags"]) for r in await fetch_rows(dsn)]
    assert after == before


async def test_export_json_with_filters(client: httpx.AsyncClient) -> None:
    await client.post("/tutorials/import", content=lines(*ROWS), headers=NDJSON)
    everything = await client.get("/tutorials/export", params={"format": "json"})
    assert everything.headers["content-type"] == "application/json"
    assert [row["name"] for row in everything.json()] == [row["name"] for row in ROWS]
    tagged = await client.get("/tutorials/export", params={"format": "json", "tag": "Python"})
    assert [row["name"] for row in tagged.json()] == ["Async SQLAlchemy"]
    searched = await client.get("/tutorials/export", params={"format": "json", "q": "quotes"})
    assert [row["name"] for row in searched.json()] == ['Quotes " and, commas']
    empty = await client.get("/tutorials/export", params={"format": "json", "tag": "nothing"})
    assert empty.json() == []


@pytest.mark.parametrize(
    ("params", "field"),
    [({"format": "xml"}, "format"), ({"tag": "a;b"}, "tag"), ({"q": "nul\x00"}, "q")],
)
async def test_bad_export_options_are_422(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/tutorials/export", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["errors"][0]["loc"][:2] == ["query", field]


async def test_database_down_is_503_for_both(
    settings: Settings, make_client: ClientFactory, database_url: object
) -> None:
    from sqlalchemy.engine import URL

    assert isinstance(database_url, URL)
    down = Database.from_url(
        database_url.set(host="127.0.0.1", port=1),
        settings.model_copy(update={"connect_timeout": 2.0}),
    )
    app: FastAPI = create_app(settings, down)
    try:
        async with make_client(app) as client:
            exported = await client.get("/tutorials/export")
            imported = await client.post("/tutorials/import", content=lines(*ROWS), headers=NDJSON)
    finally:
        await down.dispose()
    for response in (exported, imported):
        assert response.status_code == 503
        assert response.headers["content-type"] == PROBLEM
        assert "retry-after" in response.headers


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/tutorials/import", "POST"),
        ("GET", "/tutorials/import", "POST"),
        ("DELETE", "/tutorials/export", "GET, HEAD"),
        ("POST", "/tutorials/export", "GET, HEAD"),
    ],
)
async def test_other_methods_are_405_not_taken_for_an_id(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == PROBLEM
