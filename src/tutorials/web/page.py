"""Serving the page: `/` (rendered once from a Jinja2 template) and its two static files.

Everything is rendered at start-up and kept in memory: the page holds no per-request data (the
script fetches the tutorials from the API), so each request is just bytes. Jinja2 autoescapes
the template; the script only ever writes user data with `textContent`, never `innerHTML`, and
the Content-Security-Policy allows scripts from this origin only, so a stored name like
`<script>` shows as text. None of these routes appear in the OpenAPI document.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.responses import Response

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_STATIC_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


def render_page(*, writes_need_token: bool) -> bytes:
    environment = Environment(
        loader=PackageLoader("tutorials.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    template = environment.get_template("index.html")
    return template.render(writes_need_token=writes_need_token).encode("utf-8")


def install(app: FastAPI) -> None:
    """Add `/` and `/static/{name}` to `app` (hidden from the OpenAPI document)."""
    page = render_page(writes_need_token=app.state.write_guard.enabled)
    static = {
        name: (files("tutorials.web").joinpath("static", name).read_bytes(), media_type)
        for name, media_type in _STATIC_TYPES.items()
    }

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            raise HTTPException(404)
        content, media_type = found
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)
