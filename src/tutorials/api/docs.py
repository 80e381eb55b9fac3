"""`/docs` (Swagger UI) and the icon, served from files the package ships: no network needed.

FastAPI's default `/docs` loads Swagger UI from a CDN with no integrity check, which leaves a
blank page on a machine without internet. This module follows FastAPI's documented recipe for
self-hosting the docs' JavaScript and CSS (`docs_url=None`, then a docs route of our own). The
one difference is the page: FastAPI's `get_swagger_ui_html` starts Swagger UI with an inline
script, and this page starts it from a shipped file (`swagger-init.js`). Its
Content-Security-Policy can then be `script-src 'self'` with no inline exception, the same
rule as the web page's.

The files live in `docs_assets/`: Swagger UI's dist from npm, pinned, with its version,
provenance and sha256 sums written down there (`README.md`, `SHA256SUMS`;
`tests/api/test_api_docs.py` checks the sums), plus our init script and icon. They are read on
first request, not at start-up (the bundle is 1.7 MB), and kept in memory. Their URLs carry a
digest of their content, so they can be cached for a year, and a new release changes the URL.
None of these routes appear in the OpenAPI document.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ASSETS", "DOCS_CSP", "ICON_TYPES", "install"]

#: What `/docs/assets/{name}` serves, with its media type.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-init.js": "text/javascript; charset=utf-8",
}
#: The icon, at the two addresses browsers ask for.
ICON_TYPES = {
    "favicon.ico": "image/vnd.microsoft.icon",
    "favicon.svg": "image/svg+xml",
}
#: Swagger UI's own inline styles are set through the DOM (allowed by `style-src 'self'`); its
#: CSS draws its icons as `data:` SVG images. It reads only the OpenAPI document (`connect-src`),
#: and "Try it out" sends requests to this origin too.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": DOCS_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: Content-addressed URLs: the same bytes for as long as the URL exists.
IMMUTABLE = "public, max-age=31536000, immutable"
#: The icon's URL is fixed (browsers ask for /favicon.ico by name): a day, then revalidate.
ICON_CACHE = "public, max-age=86400"
GET_HEAD = ["GET", "HEAD"]


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    digest: str  # sha256 prefix, the `?v=` that makes the URL change with the content


@cache
def asset(name: str) -> Asset:
    """A shipped file, read once (the caller has checked `name` against the allowed names)."""
    body = files("tutorials.api").joinpath("docs_assets", name).read_bytes()
    media_type = ASSETS.get(name) or ICON_TYPES[name]
    return Asset(body, media_type, hashlib.sha256(body).hexdigest()[:16])


def page(root_path: str, openapi_url: str, title: str) -> bytes:
    """The `/docs` page: Swagger UI's CSS and scripts from this server, nothing inline."""

    def url(name: str) -> str:
        return html.escape(f"{root_path}/docs/assets/{name}?v={asset(name).digest}")

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)} - API docs</title>
<link rel="stylesheet" href="{url("swagger-ui.css")}">
<link rel="icon" href="{html.escape(root_path)}/favicon.svg" type="image/svg+xml">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{html.escape(root_path + openapi_url)}"></div>
<script src="{url("swagger-ui-bundle.js")}"></script>
<script src="{url("swagger-init.js")}"></script>
</body>
</html>
""".encode()


def install(app: FastAPI) -> None:
    """Add `/docs`, its assets, `/favicon.ico` and `/favicon.svg` to `app` (GET and HEAD).

    The app must be made with `docs_url=None` (FastAPI's CDN page would otherwise answer
    first). Without an OpenAPI document (`openapi_url=None`) there are no docs to show, and
    only the icon is added.
    """
    if app.openapi_url:
        openapi_url, title = app.openapi_url, app.title

        @app.api_route("/docs", methods=GET_HEAD, include_in_schema=False)
        async def docs(request: Request) -> Response:
            root_path = str(request.scope.get("root_path", "")).rstrip("/")
            body = page(root_path, openapi_url, title)
            return Response(body, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

        @app.api_route("/docs/assets/{name}", methods=GET_HEAD, include_in_schema=False)
        async def docs_asset(name: str) -> Response:
            if name not in ASSETS:
                raise HTTPException(404)
            return _file(name, IMMUTABLE)

    @app.api_route("/favicon.ico", methods=GET_HEAD, include_in_schema=False)
    async def favicon_ico() -> Response:
        return _file("favicon.ico", ICON_CACHE)

    @app.api_route("/favicon.svg", methods=GET_HEAD, include_in_schema=False)
    async def favicon_svg() -> Response:
        return _file("favicon.svg", ICON_CACHE)


def _file(name: str, cache_control: str) -> Response:
    found = asset(name)
    headers = {"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}
    return Response(found.body, media_type=found.media_type, headers=headers)
