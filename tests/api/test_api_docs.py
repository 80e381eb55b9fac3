"""`/docs` and the icon come from files the package ships: pinned, checked, and no other host.

The browser test opens `/docs` in headless Chromium with every request to another origin
refused, and waits for Swagger UI to list the API's operations. It runs where Chromium and
Playwright are installed (`apt-get install chromium`; Playwright is a development dependency)
and says why it skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tutorials.api.docs import ASSETS, ICON_TYPES

ASSET_DIR = Path(str(files("tutorials.api").joinpath("docs_assets")))
#: Files in docs_assets/ that are ours, not Swagger UI's (not in SHA256SUMS).
OURS = {"README.md", "SHA256SUMS", "swagger-init.js", "favicon.svg", "favicon.ico"}
REFERENCE = re.compile(r"""(?:src|href)="([^"]+)\"""")


def _recorded() -> dict[str, str]:
    sums = {}
    for line in (ASSET_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_vendored_swagger_ui_matches_its_recorded_hashes_and_version() -> None:
    recorded = _recorded()
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"} <= set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((ASSET_DIR / name).read_bytes()).hexdigest() == digest, name
    shipped = {path.name for path in ASSET_DIR.iterdir() if path.is_file()}
    assert shipped - OURS == set(recorded), "a vendored file without a recorded sum"
    version = re.search(r"`swagger-ui-dist` (\d+\.\d+\.\d+)", (ASSET_DIR / "README.md").read_text())
    assert version is not None
    bundle = (ASSET_DIR / "swagger-ui-bundle.js").read_text(encoding="utf-8")
    assert f'PACKAGE_VERSION:"{version.group(1)}"' in bundle


async def test_docs_page_loads_everything_from_this_server(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert "default-src 'none'" in csp
    page = response.text
    assert "http://" not in page
    assert "https://" not in page
    assert "<script>" not in page  # every script has a src (an inline one would break the CSP)
    referenced = REFERENCE.findall(page)
    assert len(referenced) == 4  # the CSS, the icon, the bundle, the init script
    for url in referenced:
        assert url.startswith("/"), url
        loaded = await client.get(url)
        assert loaded.status_code == 200, url
    openapi = re.search(r'data-openapi-url="([^"]+)"', page)
    assert openapi is not None
    assert (await client.get(openapi.group(1))).json()["openapi"].startswith("3.")


async def test_docs_assets_have_their_types_and_are_cached_for_good(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/docs")).text
    for name, media_type in ASSETS.items():
        url = re.search(rf'"(/docs/assets/{re.escape(name)}\?v=[0-9a-f]+)"', page)
        assert url is not None, name
        response = await client.get(url.group(1))
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == (ASSET_DIR / name).read_bytes()
        digest = hashlib.sha256(response.content).hexdigest()
        assert url.group(1).endswith(f"?v={digest[:16]}")  # the URL changes with the bytes


async def test_only_the_listed_assets_are_served(client: httpx.AsyncClient) -> None:
    for name in ("README.md", "SHA256SUMS", "..%2F..%2Fdocs.py", "nothing.js"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"] == "application/problem+json"


async def test_favicon_is_an_icon_and_cacheable(client: httpx.AsyncClient) -> None:
    for name, media_type in ICON_TYPES.items():
        response = await client.get(f"/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        assert response.headers["cache-control"] == "public, max-age=86400"
    ico = (await client.get("/favicon.ico")).content
    assert ico[:4] == b"\x00\x00\x01\x00"  # ICO header: reserved 0, type 1 (icon)
    count = int.from_bytes(ico[4:6], "little")
    assert count >= 1
    assert b"\x89PNG" in ico
    svg = (await client.get("/favicon.svg")).text
    assert svg.startswith("<svg") and "<script" not in svg


async def test_docs_and_icons_are_not_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/favicon"))]


async def test_head_answers_on_docs_routes(client: httpx.AsyncClient) -> None:
    for url in ("/docs", "/favicon.ico", "/docs/assets/swagger-ui.css"):
        response = await client.head(url)
        assert response.status_code == 200, url


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def served(app: FastAPI) -> Iterator[str]:
    """The test's app on a free loopback port (uvicorn in a thread), for a real browser."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # loop="asyncio": uvicorn's "auto" (uvloop) sets the process's event loop policy on the
    # older uvicorn releases admitted, which would break the test's own loop.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_docs_render_the_operations_in_a_browser_without_network(served: str) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.async_api")
    foreign: list[str] = []
    violations: list[str] = []
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page()

            async def only_this_server(route: object) -> None:
                request = route.request  # type: ignore[attr-defined]
                if request.url.startswith(served + "/"):
                    await route.continue_()  # type: ignore[attr-defined]
                else:
                    foreign.append(request.url)
                    await route.abort()  # type: ignore[attr-defined]

            await page.route("**/*", only_this_server)
            page.on(
                "console",
                lambda message: (
                    violations.append(message.text)
                    if "Content Security Policy" in message.text
                    else None
                ),
            )
            await page.goto(served + "/docs")
            operations = page.locator(".opblock-summary-path")
            await operations.first.wait_for(timeout=30_000)
            shown = await operations.all_inner_texts()
            await asyncio.sleep(0.2)  # late console messages
        finally:
            await browser.close()
    assert any(path.replace("\u200b", "") == "/tutorials/{tutorial_id}" for path in shown), shown
    assert foreign == []
    assert violations == []
