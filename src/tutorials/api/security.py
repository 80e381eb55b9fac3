"""Bearer tokens for writes: with `TUTORIALS_API_TOKENS` set, every unsafe request needs one.

The rule is enforced by structure, not by convention: `WriteGuardMiddleware` sits in front of
the router and refuses any request with a method other than GET, HEAD, OPTIONS and TRACE
(RFC 9110's safe methods) that would run a route, without a valid token, with 401 and the
Bearer challenge, before a body or the database is reached. A route added tomorrow is guarded
the day it is added; it cannot forget to ask. (A request that runs no route is left to the
router's 404 or 405.) The one way to exempt a write route is to declare it, on the app itself,
open in its own OpenAPI entry, `openapi_extra=OPEN_TO_ANYONE` (`security: []`, which is what
the document then says to clients). Only the page's sign-in and sign-out (`POST` / `DELETE
/session`) are open: they check the token themselves, and a signed-in page's writes pass here
with its session cookie and CSRF header (`tutorials.web.signin`) in place of the bearer header
(403 when only the CSRF header is missing or wrong).

Reads stay open. Tokens are compared in constant time: both sides are hashed first (so the
comparison does not even leak the length) and every configured token is compared, without
stopping at the first match. `WriteGuard.allows` is the one check.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from tutorials.api.problems import problem_response
from tutorials.web import signin

BEARER_SCHEME = "bearerAuth"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tutorials"'}
#: RFC 9110 §9.2.1: methods that change nothing. Every other method needs a token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: A route's `openapi_extra` that declares it open to writers without a token (OpenAPI's empty
#: security requirement). The only exemption from the guard; see the module docstring.
OPEN_TO_ANYONE: dict[str, Any] = {"security": []}
REFUSAL = "this write needs a valid token: send Authorization: Bearer <token>"
CSRF_REFUSAL = "this write from the page lacks its CSRF token: reload the page"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class WriteGuard:
    """The configured tokens (as digests) and the check of an `Authorization` header."""

    def __init__(self, tokens: Sequence[SecretStr]) -> None:
        self._digests = [_digest(token.get_secret_value().encode("utf-8")) for token in tokens]
        #: The page's sign-in sessions are signed with these (`tutorials.web.signin`).
        self.session_keys = [signin.session_key(digest) for digest in self._digests]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        if not self._digests:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = _digest(credentials.strip().encode("latin-1"))
        found = False
        for expected in self._digests:
            found |= hmac.compare_digest(offered, expected)
        return found


def declared_open(route: BaseRoute) -> bool:
    """Whether the route declares itself open to writers (`openapi_extra=OPEN_TO_ANYONE`)."""
    extra = getattr(route, "openapi_extra", None)
    return isinstance(extra, dict) and extra.get("security") == []


def open_routes(app: FastAPI) -> list[BaseRoute]:
    """The routes of `app` declared open to writers: those `WriteGuardMiddleware` lets through.

    Only routes declared on the app itself are looked at (the page's sign-in and sign-out
    are): a route of an included router that declares itself open is not found and stays
    guarded, which is the safe way to be wrong. Routes are matched by Starlette's public
    `BaseRoute.matches`, as the router itself matches them.
    """
    return [route for route in app.routes if declared_open(route)]


class WriteGuardMiddleware:
    """Refuse unsafe requests without a valid bearer token (401 + challenge) when they would
    run a route, unless that route is declared open (see `open_routes`). Does nothing when no
    tokens are configured.

    `routes` is the app's own route list, read at each refusal, so a route added after the app
    was built is guarded too. The route a request would run is found as Starlette's router
    finds it: the first route whose public `matches` says FULL. A request that runs no route
    (an unknown path: 404; a method the path does not take: 405) is left to the router, which
    answers it without running anything; so a client learns that a method is not allowed
    before it is asked for a token it could not use there."""

    def __init__(self, app: ASGIApp, guard: WriteGuard, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.guard = guard
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] not in SAFE_METHODS
            and self.guard.enabled
            and not self.guard.allows(_authorization(scope))
        ):
            target = self._target(scope)
            if target is not None and not declared_open(target):
                verdict = self._page_session(scope)
                if verdict is signin.Verdict.CSRF_REFUSED:
                    await problem_response(scope, 403, CSRF_REFUSAL)(scope, receive, send)
                    return
                if verdict is not signin.Verdict.SIGNED_IN:
                    refusal = problem_response(scope, 401, REFUSAL, headers=CHALLENGE)
                    await refusal(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _target(self, scope: Scope) -> BaseRoute | None:
        """The route the router will run for this request, None if it will run none."""
        for route in self.routes:
            if route.matches(scope)[0] is Match.FULL:
                return route
        return None

    def _page_session(self, scope: Scope) -> signin.Verdict:
        """The page's signed-in session and its CSRF header, standing in for a token."""
        request = Request(scope)
        return signin.check(
            self.guard.session_keys,
            request.cookies.get(signin.SESSION_COOKIE),
            request.headers.get(signin.CSRF_HEADER),
            now=time.time(),
        )


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value).decode("latin-1")
    return None
