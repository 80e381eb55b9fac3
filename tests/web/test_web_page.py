"""The web page: served at /, escapes everything, and stays out of the OpenAPI document."""

from __future__ import annotations

import re
from importlib.resources import files

import httpx
from fastapi import FastAPI
from pydantic import SecretStr
from tests.api.conftest import ClientFactory

from tutorials.api import create_app
from tutorials.db.session import Database
from tutorials.settings import Settings

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def test_the_page_is_served_with_a_strict_content_security_policy(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/static/app.js" defer></script>' in response.text
    assert not re.search(r"<script>(?!\s*</script>)", response.text)  # no inline script
    assert 'id="search"' in response.text and 'id="add"' in response.text


async def test_its_static_files_are_served_with_their_types(client: httpx.AsyncClient) -> None:
    script = await client.get("/static/app.js")
    style = await client.get("/static/app.css")
    missing = await client.get("/static/secrets.txt")
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    traversal = await client.get("/static/..%2F..%2Fsettings.py")
    assert traversal.status_code == 404


async def test_stored_markup_reaches_the_page_only_as_data(client: httpx.AsyncClient) -> None:
    created = await client.post("/tutorials", json={"name": XSS, "description": XSS})
    assert created.status_code == 201
    page = await client.get("/")
    assert XSS not in page.text  # the page holds no data; the script fetches it as JSON
    listing = await client.get("/tutorials")
    assert listing.json()["items"][0]["name"] == XSS  # stored as given, shown as text


def test_the_script_writes_user_data_as_text_only() -> None:
    script = files("tutorials.web").joinpath("static", "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "textContent" in script


async def test_the_page_asks_for_a_token_only_when_writes_need_one(
    settings: Settings, database: Database, make_client: ClientFactory, app: FastAPI
) -> None:
    secured = create_app(settings.model_copy(update={"api_tokens": [SecretStr("t")]}), database)
    async with make_client(secured) as client:
        with_token = (await client.get("/")).text
    async with make_client(app) as client:
        without = (await client.get("/")).text
    assert 'name="token"' in with_token
    assert 'name="token"' not in without


def test_the_page_is_not_in_the_openapi_document(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    assert "/" not in paths
    assert "/static/{name}" not in paths


async def test_every_asset_the_page_names_ships_with_the_package(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/")).text
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page)
    local = [asset for asset in assets if asset.startswith("/static/")]
    assert len(local) == 3  # the script, the style, the icon
    for asset in local:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert [a for a in assets if "://" in a or a.startswith("//")] == []
    for name in ("app.js", "app.css"):
        text = files("tutorials.web").joinpath("static", name).read_text()
        text = text.replace("http:// or https://", "").replace("https://example.com/guide", "")
        assert "://" not in text  # no other origin named (but in the words of an error)
