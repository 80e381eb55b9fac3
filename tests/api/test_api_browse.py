"""The API's browsing additions: `sort` and `prefix` on GET /tutorials, GET /tutorials/count
and GET /tags, on a real database, documented in the OpenAPI document."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from tests.api.helpers import create


async def _ids(client: httpx.AsyncClient, **params: object) -> list[int]:
    """Every id GET /tutorials pages through with these parameters, two at a time."""
    seen: list[int] = []
    query: dict[str, object] = {"limit": 2, **params}
    while True:
        response = await client.get("/tutorials", params=query)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [item["tutorial_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            return seen
        query["cursor"] = page["next_cursor"]


async def test_sort_orders_the_listing_and_oldest_stays_the_default(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await create(client, name=name)).json()["tutorial_id"] for name in ("b", "C", "a")]
    assert await _ids(client) == ids
    assert await _ids(client, sort="oldest") == ids
    assert await _ids(client, sort="newest") == ids[::-1]
    assert await _ids(client, sort="name") == [ids[2], ids[0], ids[1]]
    patched = await client.patch(f"/tutorials/{ids[0]}", json={"description": "new"})
    assert patched.status_code == 200
    assert (await _ids(client, sort="updated"))[0] == ids[0]


async def test_a_bad_sort_or_prefix_is_a_422_naming_the_parameter(
    client: httpx.AsyncClient,
) -> None:
    for params, name in (({"sort": "random"}, "sort"), ({"q": "x", "prefix": "yes"}, "prefix")):
        response = await client.get("/tutorials", params=params)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["loc"] == ["query", name]


async def test_a_cursor_of_another_order_is_refused(client: httpx.AsyncClient) -> None:
    for name in ("a", "b"):
        await create(client, name=name)
    page = (await client.get("/tutorials", params={"limit": 1, "sort": "name"})).json()
    response = await client.get("/tutorials", params={"cursor": page["next_cursor"]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "cursor"]


async def test_prefix_finds_the_word_being_typed(client: httpx.AsyncClient) -> None:
    wanted = (await create(client, name="Async SQLAlchemy")).json()["tutorial_id"]
    await create(client, name="Rust")
    typed = await client.get("/tutorials", params={"q": "async sqlalch", "prefix": "true"})
    whole = await client.get("/tutorials", params={"q": "async sqlalch"})
    assert [item["tutorial_id"] for item in typed.json()["items"]] == [wanted]
    assert whole.json()["items"] == []


async def test_count_says_how_many_a_listing_or_search_holds(client: httpx.AsyncClient) -> None:
    await create(client, name="Python one", tags=["python"])
    await create(client, name="Python two")
    await create(client, name="Rust")
    cases = [
        ({}, 3),
        ({"tag": "Python"}, 1),
        ({"q": "pyth", "prefix": "true"}, 2),
        ({"q": "pyth"}, 0),
        ({"q": "  "}, 3),
        ({"tag": ""}, 3),
    ]
    for params, expected in cases:
        response = await client.get("/tutorials/count", params=params)
        assert response.status_code == 200, response.text
        assert response.json() == {"count": expected, "exact": True}, params


async def test_count_refuses_bad_filters_naming_them(client: httpx.AsyncClient) -> None:
    for params, name in (
        ({"tag": "a,b"}, "tag"),
        ({"q": "\x00"}, "q"),
        ({"prefix": "1"}, "prefix"),
    ):
        response = await client.get("/tutorials/count", params=params)
        assert response.status_code == 422, params
        assert response.json()["errors"][0]["loc"][:2] == ["query", name]


async def test_tags_lists_the_most_used_tags_with_their_counts(client: httpx.AsyncClient) -> None:
    await create(client, name="a", tags=["python", "machine learning"])
    await create(client, name="b", tags=["python"])
    response = await client.get("/tags")
    assert response.status_code == 200
    assert response.json() == {
        "items": [{"tag": "python", "count": 2}, {"tag": "machine learning", "count": 1}]
    }
    assert len((await client.get("/tags", params={"limit": 1})).json()["items"]) == 1
    refused = await client.get("/tags", params={"limit": 0})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"][0]["loc"] == ["query", "limit"]


def test_the_additions_are_documented(app: FastAPI) -> None:
    document = app.openapi()
    listing = {p["name"]: p for p in document["paths"]["/tutorials"]["get"]["parameters"]}
    assert listing["sort"]["schema"]["enum"] == ["oldest", "newest", "name", "updated"]
    assert listing["prefix"]["schema"]["type"] == "boolean"
    count = document["paths"]["/tutorials/count"]["get"]
    assert {p["name"] for p in count["parameters"]} == {"tag", "q", "prefix"}
    assert (
        "pattern" in next(p for p in count["parameters"] if p["name"] == "tag")["schema"]["items"]
    )
    tags = document["paths"]["/tags"]["get"]
    assert [p["name"] for p in tags["parameters"]] == ["limit"]
    assert "application/problem+json" in tags["responses"]["422"]["content"]


def test_the_declared_orders_are_the_services() -> None:
    from typing import get_args

    from tutorials import service
    from tutorials.api.params import Order

    assert get_args(Order) == tuple(service.ORDERS)
