"""What every answer shares, whichever route gives it: HEAD wherever GET is, and the default
headers of a JSON answer (`nosniff`, a `Cache-Control`)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from tests.api.helpers import concrete, create, route_table

#: Headers that differ between any two answers by nature.
VOLATILE = {"date", "x-request-id"}


async def test_head_answers_every_get_route_as_get_does_without_a_body(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    created = await create(client, tags=["python"])
    samples = {"tutorial_id": str(created.json()["tutorial_id"]), "name": "app.js"}
    paths = [
        concrete(path, samples) for path, methods in route_table(app).items() if "GET" in methods
    ]
    paths += ["/tutorials/424242", "/tutorials?limit=0", "/tutorials?q=python&limit=1"]
    assert {"/tutorials", "/tutorials/export", "/healthz", "/openapi.json"} <= set(paths)
    for path in paths:
        got = await client.get(path)
        head = await client.head(path)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        volatile = VOLATILE | ({"content-length"} if path == "/metrics" else set())  # counts
        assert {k: v for k, v in head.headers.items() if k not in volatile} == {
            k: v for k, v in got.headers.items() if k not in volatile
        }, path
    tag = created.headers["etag"]
    location = created.headers["location"]
    not_modified = await client.head(location, headers={"If-None-Match": tag})
    assert (not_modified.status_code, not_modified.headers["etag"]) == (304, tag)


async def test_a_head_is_logged_and_counted_as_head(client: httpx.AsyncClient) -> None:
    await client.head("/healthz")
    metrics = (await client.get("/metrics")).text
    assert 'method="HEAD",route="/healthz",status="200"' in metrics
    assert 'method="GET",route="/healthz"' not in metrics


async def test_json_answers_are_never_sniffed_nor_stored(client: httpx.AsyncClient) -> None:
    created = await create(client)
    location = created.headers["location"]
    assert created.headers["cache-control"] == "no-store"  # a write's answer
    answers = [
        await client.get("/tutorials"),
        await client.get("/tutorials/424242"),  # problem 404
        await client.get("/tutorials?limit=101"),  # problem 422
        await client.put(location),  # problem 405
        await client.patch(location, json={"name": "changed"}),
        await client.delete("/tutorials", params={"tag": "none", "dry_run": "true"}),
        await client.get("/healthz"),
        await client.get("/openapi.json"),
    ]
    for response in answers:
        assert response.headers["content-type"].startswith("application/"), response.url
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], response.url
        assert response.headers.get_list("cache-control") == ["no-store"], response.url


async def test_a_tutorial_may_be_cached_but_must_be_revalidated(client: httpx.AsyncClient) -> None:
    """It has a strong ETag: a cache keeps it and asks with If-None-Match, answered 304."""
    location = (await create(client)).headers["location"]
    fresh = await client.get(location)
    assert fresh.headers.get_list("cache-control") == ["no-cache"]
    assert fresh.headers["x-content-type-options"] == "nosniff"
    again = await client.get(location, headers={"If-None-Match": fresh.headers["etag"]})
    assert (again.status_code, again.headers.get_list("cache-control")) == (304, ["no-cache"])


async def test_what_sets_its_own_headers_keeps_them(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.headers.get_list("cache-control") == ["no-cache"]
    assert page.headers.get_list("x-content-type-options") == ["nosniff"]
    export = await client.get("/tutorials/export")  # CSV: not JSON, no default cache rule
    assert "cache-control" not in export.headers
    assert export.headers["x-content-type-options"] == "nosniff"
