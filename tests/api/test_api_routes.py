"""The tutorial routes on a real database: every success path and its headers, conditional
requests, pagination and search, and that a 2xx is already durable when it arrives."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from tests.api.helpers import create, fetch_rows

FIELDS = {
    "tutorial_id",
    "name",
    "url",
    "description",
    "tags",
    "created_at",
    "updated_at",
    "version",
}


async def test_post_answers_201_with_location_etag_and_the_stored_tutorial(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/tutorials",
        json={
            "name": "  Async SQLAlchemy  ",
            "url": "https://example.org/async",
            "description": "Sessions & pools",
            "tags": ["Python", "sql", "python"],
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == FIELDS
    assert body["name"] == "Async SQLAlchemy"
    assert body["tags"] == ["python", "sql"]
    assert body["version"] == 1
    assert response.headers["location"] == f"/tutorials/{body['tutorial_id']}"
    assert response.headers["etag"] == '"1"'
    assert response.headers["content-type"] == "application/json"


async def test_a_201_is_durable_before_it_arrives(client: httpx.AsyncClient, dsn: str) -> None:
    created = (await create(client, name="durable", url="https://example.org/d")).json()
    # A different connection, outside the app: the row is already committed.
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT name, url FROM tutorials WHERE tutorial_id = $1", created["tutorial_id"]
        )
    finally:
        await connection.close()
    assert row is not None
    assert (row["name"], row["url"]) == ("durable", "https://example.org/d")


async def test_post_of_a_taken_url_is_409_and_stores_nothing(
    client: httpx.AsyncClient, dsn: str
) -> None:
    await create(client, url="https://example.org/same")
    response = await client.post(
        "/tutorials", json={"name": "again", "url": "https://example.org/same"}
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert "url" in response.json()["detail"]
    assert [row["name"] for row in await fetch_rows(dsn)] == ["A tutorial"]


async def test_get_answers_the_tutorial_with_its_etag(client: httpx.AsyncClient) -> None:
    created = await create(client, name="one")
    response = await client.get(created.headers["location"])
    assert response.status_code == 200
    assert response.json() == created.json()
    assert response.headers["etag"] == '"1"'


async def test_get_of_a_missing_tutorial_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tutorials/424242")
    assert response.status_code == 404
    assert response.json()["detail"] == "tutorial 424242 not found"


async def test_if_none_match_gives_304_while_current_and_200_once_changed(
    client: httpx.AsyncClient,
) -> None:
    location = (await create(client)).headers["location"]
    for header in ('"1"', 'W/"1"', '"7", "1"', "*"):
        response = await client.get(location, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == '"1"'
    await client.patch(location, json={"description": "new"})
    response = await client.get(location, headers={"If-None-Match": '"1"'})
    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'


async def test_a_malformed_if_none_match_is_ignored(client: httpx.AsyncClient) -> None:
    location = (await create(client)).headers["location"]
    response = await client.get(location, headers={"If-None-Match": '"unterminated'})
    assert response.status_code == 200


async def test_patch_is_a_json_merge_patch(client: httpx.AsyncClient) -> None:
    created = await create(
        client, name="before", url="https://example.org/p", description="d", tags=["a"]
    )
    response = await client.patch(
        created.headers["location"],
        content=b'{"name": "after", "description": null, "tags": ["B", "c"]}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "after"
    assert body["url"] == "https://example.org/p"  # absent: unchanged
    assert body["description"] is None  # null: cleared
    assert body["tags"] == ["b", "c"]  # arrays are replaced whole
    assert body["version"] == 2
    assert response.headers["etag"] == '"2"'


async def test_patch_accepts_plain_json_too(client: httpx.AsyncClient) -> None:
    location = (await create(client)).headers["location"]
    response = await client.patch(location, json={"tags": None})
    assert response.status_code == 200
    assert response.json()["tags"] == []


async def test_an_empty_patch_changes_nothing(client: httpx.AsyncClient, dsn: str) -> None:
    created = await create(client)
    response = await client.patch(created.headers["location"], json={})
    assert response.status_code == 200
    assert response.json() == created.json()
    assert (await fetch_rows(dsn))[0]["version"] == 1


async def test_patch_with_a_current_if_match_applies(client: httpx.AsyncClient) -> None:
    location = (await create(client)).headers["location"]
    for header, new_tag in (('"1"', '"2"'), ('"9", "2"', '"3"'), ("*", '"4"'), ("3", None)):
        response = await client.patch(location, json={"name": header}, headers={"If-Match": header})
        if new_tag is None:  # a bare 3 is read as "3": stale by now
            assert response.status_code == 412
            continue
        assert response.status_code == 200, header
        assert response.headers["etag"] == new_tag


async def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient, dsn: str
) -> None:
    location = (await create(client, name="kept")).headers["location"]
    await client.patch(location, json={"description": "v2"})
    before = await fetch_rows(dsn)
    for header in ('"1"', '"1", "3"', 'W/"2"', '"x"', ""):
        response = await client.patch(location, json={"name": "lost"}, headers={"If-Match": header})
        assert response.status_code == 412, header
        assert response.headers["content-type"] == "application/problem+json"
    empty = await client.patch(location, json={}, headers={"If-Match": '"1"'})
    assert empty.status_code == 412
    assert await fetch_rows(dsn) == before


async def test_two_writers_with_the_same_etag_cannot_both_win(client: httpx.AsyncClient) -> None:
    location = (await create(client)).headers["location"]
    responses = await asyncio.gather(
        *(
            client.patch(location, json={"name": f"writer {i}"}, headers={"If-Match": '"1"'})
            for i in range(5)
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 412, 412, 412, 412]


async def test_patch_of_a_missing_tutorial_is_404(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"If-Match": '"1"'}, {"If-Match": '"1", "2"'}, {"If-Match": "*"}):
        response = await client.patch("/tutorials/424242", json={"name": "x"}, headers=headers)
        assert response.status_code == 404, headers


async def test_patch_to_a_taken_url_is_409(client: httpx.AsyncClient) -> None:
    await create(client, url="https://example.org/taken")
    location = (await create(client, url="https://example.org/other")).headers["location"]
    response = await client.patch(location, json={"url": "https://example.org/taken"})
    assert response.status_code == 409


async def test_delete_answers_204_then_404(client: httpx.AsyncClient, dsn: str) -> None:
    location = (await create(client)).headers["location"]
    response = await client.delete(location)
    assert response.status_code == 204
    assert response.content == b""
    assert await fetch_rows(dsn) == []
    assert (await client.delete(location)).status_code == 404
    assert (await client.get(location)).status_code == 404


async def test_delete_honours_if_match(client: httpx.AsyncClient, dsn: str) -> None:
    location = (await create(client)).headers["location"]
    await client.patch(location, json={"name": "v2"})
    stale = await client.delete(location, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert len(await fetch_rows(dsn)) == 1
    current = await client.delete(location, headers={"If-Match": '"2"'})
    assert current.status_code == 204
    assert await fetch_rows(dsn) == []


async def test_list_pages_by_keyset_until_next_cursor_is_null(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, name=f"t{i}")).json()["tutorial_id"] for i in range(5)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/tutorials", params=params)
        assert response.status_code == 200
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        seen += [item["tutorial_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3


async def test_pages_stay_stable_under_concurrent_inserts(client: httpx.AsyncClient) -> None:
    first_ids = [(await create(client, name=f"old {i}")).json()["tutorial_id"] for i in range(4)]
    first = (await client.get("/tutorials", params={"limit": "2"})).json()
    await create(client, name="inserted meanwhile")
    second = await client.get("/tutorials", params={"limit": "2", "cursor": first["next_cursor"]})
    ids = [item["tutorial_id"] for item in first["items"] + second.json()["items"]]
    assert ids == first_ids  # nothing skipped, nothing repeated


async def test_default_limit_is_20(client: httpx.AsyncClient) -> None:
    for i in range(21):
        await create(client, name=f"t{i}")
    page = (await client.get("/tutorials")).json()
    assert len(page["items"]) == 20
    assert page["next_cursor"] is not None


async def test_tag_filters_need_every_tag(client: httpx.AsyncClient) -> None:
    await create(client, name="both", tags=["python", "sql"])
    await create(client, name="python only", tags=["python"])
    await create(client, name="none")
    both = await client.get("/tutorials", params=[("tag", "Python"), ("tag", "sql")])
    assert [item["name"] for item in both.json()["items"]] == ["both"]
    one = await client.get("/tutorials", params={"tag": "python"})
    assert [item["name"] for item in one.json()["items"]] == ["both", "python only"]


async def test_q_is_ranked_full_text_search(client: httpx.AsyncClient) -> None:
    await create(client, name="Cooking pasta", description="nothing about databases")
    await create(client, name="PostgreSQL indexes", description="GIN and btree indexes")
    await create(client, name="Gardening", description="an aside on postgresql")
    response = await client.get("/tutorials", params={"q": "postgresql"})
    assert response.status_code == 200
    names = [item["name"] for item in response.json()["items"]]
    assert names == ["PostgreSQL indexes", "Gardening"]  # a name match outranks a description


async def test_search_pages_with_its_own_cursor(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await create(client, name=f"async tutorial {i}")
    seen = []
    cursor = None
    while True:
        params = {"q": "async", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/tutorials", params=params)).json()
        seen += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"async tutorial {i}" for i in range(5)]


async def test_an_empty_q_lists_everything(client: httpx.AsyncClient) -> None:
    await create(client, name="x")
    response = await client.get("/tutorials", params={"q": "  "})
    assert [item["name"] for item in response.json()["items"]] == ["x"]


async def test_empty_query_values_count_as_absent(client: httpx.AsyncClient) -> None:
    for i in range(21):
        await create(client, name=f"t{i}")
    response = await client.get("/tutorials?limit=&cursor=&tag=&q=")
    assert response.status_code == 200
    assert len(response.json()["items"]) == 20
    await create(client, name="tagged", tags=["python"])
    filtered = await client.get("/tutorials?tag=&tag=python&tag=")
    assert [item["name"] for item in filtered.json()["items"]] == ["tagged"]


async def test_delete_of_the_collection_deletes_what_the_filter_selects(
    client: httpx.AsyncClient, dsn: str
) -> None:
    for name, tags in (("a", ["draft"]), ("b", ["draft", "x"]), ("c", ["x"])):
        await create(client, name=name, tags=tags)
    dry = await client.delete("/tutorials", params={"tag": "draft", "dry_run": "true"})
    assert (dry.status_code, dry.headers["content-type"]) == (200, "application/json")
    assert dry.json() == {"matched": 2, "deleted": 0}
    assert len(await fetch_rows(dsn)) == 3
    done = await client.delete("/tutorials", params={"tag": "x", "q": "b"})  # x: b, c; q: b
    assert done.json() == {"matched": 1, "deleted": 1}
    assert [row["name"] for row in await fetch_rows(dsn)] == ["a", "c"]
    both = await client.delete("/tutorials", params={"tag": ["draft", "x"]})
    assert both.json() == {"matched": 0, "deleted": 0}
    everything = await client.delete("/tutorials", params={"all": "true"})
    assert everything.json() == {"matched": 2, "deleted": 2}
    assert await fetch_rows(dsn) == []


async def test_delete_of_the_collection_refuses_what_it_cannot_read(
    client: httpx.AsyncClient, dsn: str
) -> None:
    await create(client, name="kept", tags=["x"])
    for params, loc in (
        ({}, ["query", "all"]),
        ({"q": "  "}, ["query", "all"]),  # an empty search box is no filter
        ({"all": "yes"}, ["query", "all"]),
        ({"tag": "x", "dry_run": "1"}, ["query", "dry_run"]),
        ({"all": "true", "tag": "x"}, ["query", "all"]),
        ({"tag": "a,b"}, ["query", "tag", 0]),
    ):
        response = await client.delete("/tutorials", params=params)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"
        assert [error["loc"] for error in response.json()["errors"]] == [loc], params
    assert [row["name"] for row in await fetch_rows(dsn)] == ["kept"]
