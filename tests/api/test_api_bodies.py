"""Bodies on the wire: strict JSON, read by FastAPI into the domain's own models, errors located
in the body."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send
from tests.api.helpers import concrete, create, fetch_rows

from tutorials.api import routes
from tutorials.api.bodies import (
    MAX_OBJECT_KEYS,
    StrictJsonMiddleware,
    TutorialPatch,
    parse_json,
)
from tutorials.api.problems import InvalidRequest
from tutorials.api.transfer import IMPORT_PATH
from tutorials.errors import FieldError


def test_strict_json_takes_what_json_allows() -> None:
    assert parse_json(b' {"name": "caf\\u00e9", "tags": ["a"], "n": 1.5} ') == {
        "name": "café",
        "tags": ["a"],
        "n": 1.5,
    }
    assert parse_json(b"[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"", "the request body is empty: send a JSON object"),
        (b" \n", "the request body is empty: send a JSON object"),
        (b'{"name": "caf\xe9"}', "the request body is not valid UTF-8 (byte 13)"),
        (b'{"n": NaN}', "the request body is not valid JSON: NaN is not JSON"),
        (b'{"n": -Infinity}', "the request body is not valid JSON: -Infinity is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the JSON body is nested too deeply"),
    ],
)
def test_strict_json_refuses_what_is_not_json_with_400(raw: bytes, detail: str) -> None:
    with pytest.raises(HTTPException) as caught:
        parse_json(raw)
    assert (caught.value.status_code, caught.value.detail) == (400, detail)


def test_strict_json_names_duplicate_and_excess_keys_with_422() -> None:
    with pytest.raises(InvalidRequest) as duplicate:
        parse_json(b'{"name": "a", "name": "b"}')
    message = "duplicate key 'name' in the JSON object"
    assert duplicate.value.errors == [FieldError(("body",), message)]
    assert duplicate.value.status_code == 422
    many = b"{" + b",".join(b'"k%d": 0' % i for i in range(MAX_OBJECT_KEYS + 1)) + b"}"
    with pytest.raises(InvalidRequest) as excess:
        parse_json(many)
    assert excess.value.errors == [
        FieldError(("body",), f"a JSON object with {MAX_OBJECT_KEYS + 1} keys: at most 64")
    ]
    assert len(parse_json(many.replace(b'"k0": 0,', b""))) == MAX_OBJECT_KEYS  # type: ignore[arg-type]


async def test_names_with_surrounding_whitespace_are_trimmed_not_refused(
    client: httpx.AsyncClient, dsn: str
) -> None:
    response = await create(client, name="\u3000 padded \n")
    assert response.json()["name"] == "padded"
    assert [row["name"] for row in await fetch_rows(dsn)] == ["padded"]


@pytest.mark.parametrize(
    "url",
    [" http://a.io", "http://a.io ", "https://user@a.io", "http://[::1]/", "http:///x", "mailto:a"],
)
async def test_urls_outside_the_published_pattern_are_refused(
    client: httpx.AsyncClient, url: str
) -> None:
    response = await client.post("/tutorials", json={"name": "x", "url": url})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["errors"]] == [["body", "url"]]


def test_a_patch_lists_only_what_it_changes() -> None:
    assert TutorialPatch.model_validate({}).changes() == {}
    assert TutorialPatch.model_validate({"description": None, "tags": None}).changes() == {
        "description": None,
        "tags": [],
    }
    assert TutorialPatch.model_validate({"name": " n "}).changes() == {"name": "n"}


DUPLICATE_KEYS = b'{"name": "a", "name": "b"}'
JSON_MEDIA_TYPES = ("application/json", "application/merge-patch+json")


async def test_every_json_body_operation_reads_its_body_strictly(
    app: FastAPI, client: httpx.AsyncClient, dsn: str
) -> None:
    """Walks the published operations, so a body route added without joining
    `JSON_BODY_ROUTES` fails here (the import reads its body itself: tests/test_transfer.py)."""
    tutorial_id = (await create(client)).json()["tutorial_id"]
    checked = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if path == IMPORT_PATH or not set(JSON_MEDIA_TYPES) & set(content):
                continue
            for media_type in set(JSON_MEDIA_TYPES) & set(content):
                response = await client.request(
                    method,
                    concrete(path, {"tutorial_id": str(tutorial_id)}),
                    content=DUPLICATE_KEYS,
                    headers={"Content-Type": media_type},
                )
                assert response.status_code == 422, (method, path, media_type)
                assert "duplicate key 'name'" in response.json()["detail"]
            checked.append(f"{method.upper()} {path}")
    assert sorted(checked) == ["PATCH /tutorials/{tutorial_id}", "POST /tutorials"]
    assert [row["name"] for row in await fetch_rows(dsn)] == ["A tutorial"]


async def test_a_request_that_runs_no_route_is_left_to_the_router(
    client: httpx.AsyncClient,
) -> None:
    """Unsound JSON to an unknown path is a 404, to a method the path does not take a 405:
    the body is only read for a route that will run."""
    json = {"Content-Type": "application/json"}
    for method, path, status in (
        ("POST", "/tutorials/1", 405),
        ("PUT", "/tutorials/1", 405),
        ("PATCH", "/tutorials/abc", 404),
        ("POST", "/nothing", 404),
    ):
        response = await client.request(method, path, content=b'{"n": NaN}', headers=json)
        assert response.status_code == status, (method, path)


async def test_a_sound_body_reaches_the_route_whole_and_once() -> None:
    """The body, read here in several parts, is handed on as it came; what the client sends
    next (its disconnect) still reaches the app."""
    parts: list[Message] = [
        {"type": "http.request", "body": b'{"name": ', "more_body": True},
        {"type": "http.request", "body": b'"split"}', "more_body": False},
        {"type": "http.disconnect"},
    ]
    seen: list[Message] = []

    async def receive() -> Message:
        return parts.pop(0)

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        seen.append(await receive())

    async def send(message: Message) -> None:
        raise AssertionError(f"nothing should be answered here: {message}")

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/tutorials",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
    }
    await StrictJsonMiddleware(downstream, routes.JSON_BODY_ROUTES)(scope, receive, send)
    assert seen == [
        {"type": "http.request", "body": b'{"name": "split"}', "more_body": False},
        {"type": "http.disconnect"},
    ]


async def test_a_refused_body_is_counted_under_its_route(client: httpx.AsyncClient) -> None:
    json = {"Content-Type": "application/json"}
    await client.post("/tutorials", content=DUPLICATE_KEYS, headers=json)
    await client.patch("/tutorials/7", content=b"[", headers=json)
    metrics = (await client.get("/metrics")).text
    assert 'method="POST",route="/tutorials",status="422"' in metrics
    assert 'method="PATCH",route="/tutorials/{tutorial_id}",status="400"' in metrics
    assert 'route="unmatched"' not in metrics
