"""`PlainRoute`: a documented FastAPI route whose handler is a plain `request -> response`.

Our handlers take only the `Request`, validate by hand against the published schemas, and
build their `Response`; FastAPI's part is the OpenAPI document (`response_model`,
`openapi_extra`, ...) and exception handling. Its per-request machinery (solving the handler's
signature and dependencies, reading the body for a body parameter, telemetry hooks) did nothing
for such a handler but cost ≈ 150 µs of CPU per request, about a quarter of a whole
`GET /tutorials/{id}` (benchmarks/RESULTS.md). This route class skips it: the endpoint is
called with the request, as in Starlette.

Consequence for whoever adds a route: with `route_class=PlainRoute`, declared parameters and
`dependencies=[...]` are documentation only and never run; checks such as
`security.require_writer` are called at the top of the handler. The tutorial routes are
moreover served by `dispatch.DirectRoutes`, outside FastAPI's router: a handler there reads
the request (path parameters, headers, body, `app.state`) but not the router
(`request.url_for` needs `scope["router"]`, which is not set on that path).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

PlainHandler = Callable[[Request], Coroutine[Any, Any, Response]]


class PlainRoute(APIRoute):
    """An `APIRoute` that calls its endpoint with the request and sends what it returns."""

    def get_route_handler(self) -> PlainHandler:
        endpoint: PlainHandler = self.endpoint
        return endpoint
