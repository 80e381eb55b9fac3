"""Errors: every one is RFC 9457 problem+json with a useful detail, nothing a client sends gets
a 500 or a glimpse of our internals, and no refused request changes a row."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from tests.api.conftest import ClientFactory
from tests.api.helpers import create, fetch_rows

from tutorials.api import create_app
from tutorials.db.session import Database
from tutorials.settings import Settings

#: Each status's title: RFC 9110's reason phrases, written out here rather than read from the
#: code under test.
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "request_id"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = dict(response.json())
    assert set(problem) >= PROBLEM_KEYS
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"] == TITLES[status]
    assert problem["request_id"] == response.headers["x-request-id"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    return problem


async def test_unknown_routes_are_404_problems(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.get("/no/such/thing"), 404)
    assert problem["instance"] == "/no/such/thing"
    assert "/no/such/thing" in str(problem["detail"])


async def test_a_wrong_method_is_405_with_every_allowed_method(client: httpx.AsyncClient) -> None:
    response = await client.put("/tutorials/1", json={})
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, HEAD, PATCH, DELETE"
    collection = await client.put("/tutorials", json={})
    assert_problem(collection, 405)
    assert collection.headers["allow"] == "GET, HEAD, POST, DELETE"


async def test_an_unknown_method_lists_only_its_paths_methods(client: httpx.AsyncClient) -> None:
    for path, allow in (
        ("/tutorials/import", "POST"),
        ("/tutorials/export", "GET, HEAD"),
        ("/tutorials/1", "GET, HEAD, PATCH, DELETE"),
        ("/healthz", "GET, HEAD"),
    ):
        for method in ("TRACE", "CONNECT", "FROB"):
            response = await client.request(method, path)
            problem = assert_problem(response, 405)
            assert response.headers["allow"] == allow, (method, path)
            assert problem["detail"] == f"{method} is not allowed here; allowed: {allow}"


async def test_invalid_fields_are_422_naming_each_one(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/tutorials",
        json={"name": " ", "url": "ftp://x", "tags": ["ok", "bad,tag"], "extra": 1},
    )
    problem = assert_problem(response, 422)
    errors = problem["errors"]
    assert isinstance(errors, list)
    locations = {tuple(error["loc"]) for error in errors}
    assert locations == {
        ("body", "name"),
        ("body", "url"),
        ("body", "tags", 1),
        ("body", "extra"),
    }
    assert all(error["msg"] for error in errors)
    assert "body.name" in str(problem["detail"])


async def test_post_without_a_name_is_422(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.post("/tutorials", json={"url": "https://a.io"}), 422)
    assert problem["errors"] == [{"loc": ["body", "name"], "msg": "Field required"}]


INVALID_BODIES: list[tuple[object, list[object]]] = [
    ({"name": "nul\u0000byte"}, ["body", "name"]),
    ({"name": "x", "description": "nul\u0000"}, ["body", "description"]),
    ({"name": "x", "tags": ["a\u0000"]}, ["body", "tags", 0]),
    ({"name": "x" * 256}, ["body", "name"]),
    ({"name": "x", "url": "https://example.org/\u00e9"}, ["body", "url"]),
    ({"name": "x", "tags": ["t"] * 51}, ["body", "tags"]),
    ({"name": 5}, ["body", "name"]),
    ([1, 2], ["body"]),
    ("just a string", ["body"]),
]


async def test_values_postgresql_or_the_schema_cannot_take_are_422(
    client: httpx.AsyncClient, dsn: str
) -> None:
    for body, location in INVALID_BODIES:
        problem = assert_problem(await client.post("/tutorials", json=body), 422)
        errors = problem["errors"]
        assert isinstance(errors, list)
        assert location in [error["loc"] for error in errors], body
    assert await fetch_rows(dsn) == []


async def test_patch_cannot_clear_the_name(client: httpx.AsyncClient, dsn: str) -> None:
    location = (await create(client)).headers["location"]
    problem = assert_problem(await client.patch(location, json={"name": None}), 422)
    assert problem["errors"] == [
        {"loc": ["body", "name"], "msg": "name cannot be null (it is required)"}
    ]
    assert (await fetch_rows(dsn))[0]["name"] == "A tutorial"


UNSOUND_BODIES: list[tuple[str, bytes, int]] = [
    ("duplicate keys", b'{"name": "a", "name": "b"}', 422),
    ("Latin-1, not UTF-8", b'{"name": "caf\xe9"}', 400),
    ("not UTF-8 at all", b'{"name": "\xff\xfe"}', 400),
    ("a byte-order mark", b"\xef\xbb\xbf{}", 400),
    ("truncated", b'{"name": ', 400),
    ("NaN", b'{"name": NaN}', 400),
    ("empty", b"", 400),
    ("blank", b"   ", 400),
    ("nested 200,000 deep", b"[" * 200_000 + b"]" * 200_000, 400),
    ("a name nested 5,000 deep", b'{"name": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 400),
    ("tags nested 50 deep", b'{"name": "x", "tags": ' + b"[" * 50 + b"]" * 50 + b"}", 422),
]


async def test_bodies_that_are_not_sound_json_are_refused(
    client: httpx.AsyncClient, dsn: str
) -> None:
    for label, raw, status in UNSOUND_BODIES:
        for method, path in (("POST", "/tutorials"), ("PATCH", "/tutorials/1")):
            response = await client.request(
                method, path, content=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == status, (label, method)
            assert_problem(response, status)
    assert await fetch_rows(dsn) == []


async def test_duplicate_keys_are_named(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/tutorials",
        content=b'{"name": "a", "url": "https://a.io", "url": "https://b.io"}',
        headers={"Content-Type": "application/json"},
    )
    problem = assert_problem(response, 422)
    assert "'url'" in str(problem["detail"])


async def test_post_needs_a_json_content_type(client: httpx.AsyncClient, dsn: str) -> None:
    for content_type in (
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
        "application/merge-patch+json",
    ):
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post("/tutorials", content=b'{"name": "x"}', headers=headers)
        assert_problem(response, 415)
        assert response.headers["accept-post"] == "application/json"
    assert await fetch_rows(dsn) == []


async def test_patch_needs_a_merge_patch_or_json_content_type(client: httpx.AsyncClient) -> None:
    location = (await create(client)).headers["location"]
    response = await client.patch(
        location, content=b'{"name": "x"}', headers={"Content-Type": "application/json-patch+json"}
    )
    assert_problem(response, 415)
    assert response.headers["accept-patch"] == "application/json, application/merge-patch+json"


async def test_json_with_an_explicit_utf8_charset_is_fine(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/tutorials",
        content=json.dumps({"name": "ok"}).encode(),
        headers={"Content-Type": "Application/JSON; charset=UTF-8"},
    )
    assert response.status_code == 201


async def test_a_body_over_the_limit_is_413_whether_announced_or_chunked(
    settings: Settings, database: Database, make_client: ClientFactory, dsn: str
) -> None:
    small = create_app(settings.model_copy(update={"max_body_bytes": 100}), database)
    body = json.dumps({"name": "x", "description": "d" * 200}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 32):
            yield body[start : start + 32]

    async with make_client(small) as client:
        announced = await client.post(
            "/tutorials", content=body, headers={"Content-Type": "application/json"}
        )
        streamed = await client.post(
            "/tutorials", content=chunked(), headers={"Content-Type": "application/json"}
        )
        fits = await client.post("/tutorials", json={"name": "fits"})
    for response in (announced, streamed):
        problem = assert_problem(response, 413)
        assert "100 bytes" in str(problem["detail"])
    assert "transfer-encoding" not in announced.request.headers
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert fits.status_code == 201
    assert [row["name"] for row in await fetch_rows(dsn)] == ["fits"]


async def test_the_default_body_limit_is_one_mebibyte(client: httpx.AsyncClient) -> None:
    too_big = b'{"name": "x", "description": "' + b"d" * (1024 * 1024) + b'"}'
    response = await client.post(
        "/tutorials", content=too_big, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413)


OUT_OF_RANGE_IDS = [
    "0",
    "9223372036854775808",  # bigint + 1
    "99999999999999999999999999999999",
]
NOT_IDS = ["-1", "1.5", "1e3", "abc", "%00", "1%00", "%FF%FE", "%C3%A9", "import"]


async def test_ids_beyond_bigint_are_422_before_the_database(client: httpx.AsyncClient) -> None:
    for tutorial_id in OUT_OF_RANGE_IDS:
        for method in ("GET", "PATCH", "DELETE"):
            response = await client.request(method, f"/tutorials/{tutorial_id}", json={"x": 1})
            problem = assert_problem(response, 422)
            assert problem["errors"][0]["loc"] == ["path", "tutorial_id"]  # type: ignore[index]


async def test_paths_that_are_not_ids_name_nothing(client: httpx.AsyncClient) -> None:
    for tutorial_id in NOT_IDS:
        # `import` is a resource of its own, which takes only POST; the rest name nothing.
        status = 405 if tutorial_id == "import" else 404
        for method in ("GET", "PATCH", "DELETE"):
            response = await client.request(method, f"/tutorials/{tutorial_id}", json={"x": 1})
            assert_problem(response, status)


async def test_the_largest_bigint_is_a_plain_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/tutorials/9223372036854775807"), 404)


BAD_QUERIES: list[tuple[dict[str, str], list[object]]] = [
    ({"limit": "0"}, ["query", "limit"]),
    ({"limit": "101"}, ["query", "limit"]),
    ({"limit": "ten"}, ["query", "limit"]),
    ({"limit": "99999999999999999999999"}, ["query", "limit"]),
    # what pydantic alone would read as integers: the document says digits
    ({"limit": " 5"}, ["query", "limit"]),
    ({"limit": "5.0"}, ["query", "limit"]),
    ({"limit": "+5"}, ["query", "limit"]),
    ({"limit": "1_0"}, ["query", "limit"]),
    ({"tag": "a,b"}, ["query", "tag", 0]),
    ({"tag": "nul\u0000"}, ["query", "tag", 0]),
    ({"tag": "x" * 65}, ["query", "tag", 0]),
    ({"q": "nul\u0000"}, ["query", "q"]),
    ({"q": "x" * 1001}, ["query", "q"]),
    ({"cursor": "not a cursor!"}, ["query", "cursor"]),
    ({"cursor": "\u00e9"}, ["query", "cursor"]),
    ({"cursor": "A" * 513}, ["query", "cursor"]),
]


async def test_bad_query_values_are_422(client: httpx.AsyncClient) -> None:
    for params, location in BAD_QUERIES:
        problem = assert_problem(await client.get("/tutorials", params=params), 422)
        errors = problem["errors"]
        assert isinstance(errors, list)
        assert location in [error["loc"] for error in errors], params


#: Cursors that are made of cursor characters but name no page: each is a 422 naming `cursor`
#: (never a 404: a cursor is a query value, not a resource).
TAMPERED_CURSORS = [
    "AAAA",  # decodes, but to no JSON
    "WyJpIiwtMV0",  # ["i",-1]
    "WyJyIiwwLjUsMV0",  # a search cursor used on a plain listing
    "WyJpIiwxZTk5XQ",  # ["i",1e99]
    "WyJpIiw5OTk5OTk5OTk5OTk5OTk5OTk5OTk5XQ",  # beyond bigint
    "e30",  # {}
]


async def test_tampered_cursors_are_422_naming_the_cursor(client: httpx.AsyncClient) -> None:
    await create(client)
    for cursor in [*TAMPERED_CURSORS, "not-a-cursor", "YWJj"]:
        response = await client.get("/tutorials", params={"cursor": cursor})
        problem = assert_problem(response, 422)
        assert problem["errors"] == [
            {
                "loc": ["query", "cursor"],
                "msg": "must be a next_cursor this listing returned (start again without one)",
            }
        ], cursor


async def _second_page_cursor(client: httpx.AsyncClient, **params: str) -> str:
    cursor = (await client.get("/tutorials", params={"limit": "1", **params})).json()["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


async def test_a_cursor_belongs_to_its_listing(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, name=f"alpha {i}", tags=["a"])
    listing = await _second_page_cursor(client)
    search = await _second_page_cursor(client, q="alpha")
    tagged = await _second_page_cursor(client, tag="a")
    refused = [
        {"q": "alpha", "cursor": listing},  # a listing's cursor in a search
        {"cursor": search},  # a search's in a listing
        {"q": "other", "cursor": search},  # a search's in another search
        {"cursor": tagged},  # a tag filter's without it
        {"tag": "b", "cursor": tagged},  # ...or with another one
    ]
    for params in refused:
        assert_problem(await client.get("/tutorials", params=params), 422)
    for params in (
        {"cursor": listing},
        {"q": "alpha", "cursor": search},
        {"tag": "a", "cursor": tagged},
    ):
        assert (await client.get("/tutorials", params=params)).status_code == 200


def _with_rank(cursor: str, rank: float) -> str:
    """A real search cursor (`fingerprint_rank_id`), its rank replaced by `rank`'s bits."""
    fingerprint, _rank, last_id = cursor.split("_")
    return f"{fingerprint}_{struct.pack('>d', rank).hex()}_{last_id}"


async def test_a_search_cursor_whose_rank_is_not_a_number_is_refused(
    client: httpx.AsyncClient,
) -> None:
    for i in range(3):
        await create(client, name=f"alpha {i}")
    cursor = await _second_page_cursor(client, q="alpha")
    assert (
        await client.get("/tutorials", params={"q": "alpha", "cursor": cursor})
    ).status_code == 200
    assert (
        await client.get("/tutorials", params={"q": "alpha", "cursor": _with_rank(cursor, 0.5)})
    ).status_code == 200
    for rank in (math.nan, math.inf, -math.inf):
        response = await client.get(
            "/tutorials", params={"q": "alpha", "cursor": _with_rank(cursor, rank)}
        )
        assert_problem(response, 422)


async def test_a_malformed_if_match_is_400_and_changes_nothing(
    client: httpx.AsyncClient, dsn: str
) -> None:
    location = (await create(client)).headers["location"]
    for header in ('"unterminated', "a b", '"1" "2"', 'W/"1'):
        patched = await client.patch(location, json={"name": "x"}, headers={"If-Match": header})
        assert_problem(patched, 400)
        deleted = await client.delete(location, headers={"If-Match": header})
        assert_problem(deleted, 400)
    assert [row["name"] for row in await fetch_rows(dsn)] == ["A tutorial"]


async def test_a_bug_is_a_bare_500_that_reveals_nothing(
    settings: Settings, database: Database, make_client: ClientFactory
) -> None:
    app: FastAPI = create_app(settings, database)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret: password=hunter2 SELECT * FROM tutorials")

    async with make_client(app) as client:
        response = await client.get("/boom", headers={"X-Request-ID": "trace-me"})
    problem = assert_problem(response, 500)
    assert "hunter2" not in response.text
    assert "SELECT" not in response.text
    assert "Traceback" not in response.text
    assert "trace-me" in str(problem["detail"])


async def test_errors_never_show_the_database_url_or_sql(
    settings: Settings, database: Database, make_client: ClientFactory
) -> None:
    await database.dispose()
    url = database.engine.url.set(port=1, password="s3cret-pw")
    unreachable = Database.from_url(url, settings)
    try:
        async with make_client(create_app(settings, unreachable)) as client:
            responses = [
                await client.get("/tutorials/1"),
                await client.get("/tutorials"),
                await client.post("/tutorials", json={"name": "x"}),
            ]
    finally:
        await unreachable.dispose()
    for response in responses:
        assert_problem(response, 503)
        for secret in ("s3cret-pw", "postgresql", "asyncpg", "SELECT", "INSERT", "127.0.0.1"):
            assert secret not in response.text
