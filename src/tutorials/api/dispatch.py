"""`DirectRoutes`: serve the busiest routes straight from the middleware stack.

FastAPI still owns these routes: it documents them (OpenAPI), and answers whatever this layer
passes on. What this layer skips is FastAPI's per-request path to a handler that needs none
of it: routing through included routers (each matched twice), an `AsyncExitStack` middleware,
two more exit stacks and an exception wrapper per request. For `GET /tutorials/{id}` that was
≈ 22 µs of the app's ≈ 135 µs of CPU at 32 concurrent requests, more than everything the bare
Starlette baseline spends on HTTP (benchmarks/RESULTS.md).

It keeps the behaviour of the normal path:

- It sits innermost among the app's middlewares, so request ids, access logs, metrics, CORS
  and the body limit wrap these routes exactly as they wrap every other one.
- A request is served here only when one of `routes` matches it fully (path and method): the
  first such, as routing would pick, since these come before any other route that could match
  their paths. Anything else, including a known path with a method no route takes, goes on to
  FastAPI, which answers it as before (405 with `Allow`, 404, ...).
- `scope` gets what routing would have put there (`route`, `endpoint`, `path_params`), so
  metrics name the route template and handlers read their path parameters as usual.
- Exceptions go to the app's exception handlers, looked up by class the way Starlette does;
  one without a handler propagates to the request-context middleware (the logged 500).

Only routes whose handlers are plain `request -> response` coroutines (`PlainRoute`) can be
served here: dependencies and declared parameters are never solved on this path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from tutorials.api.plain import PlainHandler, PlainRoute

#: What Starlette accepts as an exception handler (FastAPI's `app.exception_handlers`).
ExceptionHandler = Callable[[Request, Any], Response | Awaitable[Response]]


class DirectRoutes:
    """Serve `routes` directly when one matches fully; hand everything else to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        exception_handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        self.app = app
        plain = []
        for route in routes:
            if not isinstance(route, PlainRoute):
                raise TypeError(f"{route!r} is not a PlainRoute: it needs FastAPI's routing")
            plain.append(route)
        self.routes: tuple[PlainRoute, ...] = tuple(plain)
        #: The app's handlers, by exception class (status-code handlers do not apply here).
        self.handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self._serve(route.endpoint, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, endpoint: PlainHandler, scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = answer if isinstance(answer, Response) else await answer
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        for kind in type(exc).__mro__:
            handler = self.handlers.get(kind)
            if handler is not None:
                return handler
        return None
