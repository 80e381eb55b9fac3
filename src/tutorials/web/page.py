"""Serving the page: `/` (rendered once from a Jinja2 template), its static files, and the
sign-in that lets it write when tokens are configured (`POST /session`, `DELETE /session`).

Everything is rendered at start-up and kept in memory: the page holds no per-request data (the
script fetches the tutorials from the API), so each request is just bytes. Jinja2 autoescapes
the template; the script only ever writes user data with `textContent`, never `innerHTML`, and
the Content-Security-Policy allows scripts from this origin only, so a stored name like
`<script>` shows as text. Every asset ships in the package: the page needs no network beyond
its own server. None of these routes appear in the OpenAPI document.

The sign-in (`tutorials.web.signin`): `POST /session` with `{"token": "..."}` (JSON only, so a
form on another site cannot post it, and refused when the browser says the request came from
another site) answers 204 and sets the session and CSRF cookies; a wrong token is a 401.
`DELETE /session` clears them (401 without either cookie: nobody to sign out). Like every
write refused for want of a token, refusals are 401 with the Bearer challenge. Without tokens
configured both answer 404: there is nothing to sign in to.
"""

from __future__ import annotations

import json
import secrets
import time
from importlib.resources import files

from fastapi import FastAPI, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.responses import Response

from tutorials.api.security import CHALLENGE, OPEN_TO_ANYONE, WriteGuard
from tutorials.web import signin

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
    "favicon.svg": "image/svg+xml",
}
#: A sign-in body is a token in a small JSON object.
_SIGNIN_MAX = 4096


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

    @app.post("/session", include_in_schema=False, openapi_extra=OPEN_TO_ANYONE)
    async def sign_in(request: Request) -> Response:
        guard = _guard(request)
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "sign in from the page itself")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(415, 'send the token as JSON: {"token": "..."}')
        token = _token_of(await request.body())
        if not guard.allows(f"Bearer {token}"):
            raise _refused("that token is not one this server accepts")
        now = time.time()
        session = signin.issue(
            signin.token_key(token), now=now, nonce=secrets.token_bytes(signin.NONCE_BYTES)
        )
        return _with_cookies(Response(status_code=204), signin.cookie_headers(session, now=now))

    @app.delete("/session", include_in_schema=False, openapi_extra=OPEN_TO_ANYONE)
    async def sign_out(request: Request) -> Response:
        _guard(request)
        if not {signin.SESSION_COOKIE, signin.CSRF_COOKIE} & set(request.cookies):
            raise _refused("you are not signed in")
        return _with_cookies(
            Response(status_code=204), signin.cookie_headers(None, now=time.time())
        )

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            raise HTTPException(404)
        content, media_type = found
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)


def _guard(request: Request) -> WriteGuard:
    guard: WriteGuard = request.app.state.write_guard
    if not guard.enabled:
        raise HTTPException(404, "this server needs no sign-in: it has no tokens configured")
    return guard


def _refused(detail: str) -> HTTPException:
    """401 with the Bearer challenge, like every write refused for want of a token."""
    return HTTPException(401, detail, headers=CHALLENGE)


def _token_of(body: bytes) -> str:
    """The token of a sign-in body; 401 for anything but `{"token": "<text>"}` (no token)."""
    refusal = _refused('send {"token": "<your token>"}')
    if len(body) > _SIGNIN_MAX:
        raise refusal
    try:
        document = json.loads(body)
    except ValueError:
        raise refusal from None
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token.strip() or "\x00" in token:
        raise refusal
    try:
        token.encode("latin-1")  # what the bearer header could carry
    except UnicodeEncodeError:
        raise _refused("that token is not one this server accepts") from None
    return token.strip()


def _with_cookies(response: Response, cookies: list[str]) -> Response:
    for cookie in cookies:
        response.headers.append("set-cookie", cookie)
    response.headers["cache-control"] = "no-store"
    return response
