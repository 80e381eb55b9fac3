"""Bodies on the wire: strict JSON, read by FastAPI into the domain's own models, errors located
in the body."""

from __future__ import annotations

import httpx
import pytest
from starlette.exceptions import HTTPException
from tests.api.helpers import create, fetch_rows

from tutorials.api.bodies import MAX_OBJECT_KEYS, TutorialPatch, parse_json
from tutorials.api.problems import InvalidRequest
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
