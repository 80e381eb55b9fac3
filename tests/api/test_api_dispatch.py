"""`DirectRoutes`: the tutorial routes served straight from the middleware stack must answer
exactly as FastAPI's own routing would, and pass on everything that is not theirs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.api.conftest import ClientFactory
from tests.api.helpers import create

from tutorials.api import create_app
from tutorials.api.dispatch import DirectRoutes
from tutorials.api.plain import PlainRoute
from tutorials.db.session import Database
from tutorials.settings import Settings

#: Headers that differ between any two answers (or between two apps) by nature.
VOLATILE = {"date"}


def _without_direct_routes(app: FastAPI) -> FastAPI:
    """The same app answering every request through FastAPI's routing (stack not built yet)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not DirectRoutes]
    return app


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE}
    return response.status_code, headers, response.content


def _requests(tutorial_id: int, etag: str) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
    """Requests that change nothing, covering each tutorial route's answers and refusals."""
    item = f"/tutorials/{tutorial_id}"
    json_type = {"Content-Type": "application/json"}
    yield "GET", item, {}, b""
    yield "HEAD", item, {}, b""
    yield "GET", item, {"If-None-Match": etag}, b""
    yield "GET", "/tutorials/999999", {}, b""
    yield "GET", "/tutorials/9223372036854775808", {}, b""
    yield "GET", "/tutorials?limit=1", {}, b""
    yield "GET", "/tutorials?q=tutorial", {}, b""
    yield "GET", "/tutorials?limit=0&tag=bad,tag", {}, b""
    yield "GET", "/tutorials?cursor=bm9wZQ", {}, b""
    yield "POST", "/tutorials", json_type, b"{not json"
    yield "POST", "/tutorials", json_type, b'{"name": " "}'
    yield "POST", "/tutorials", {"Content-Type": "text/plain"}, b"x"
    yield "PATCH", item, {"Content-Type": "application/merge-patch+json", "If-Match": '"99"'}, b"{}"
    yield "PATCH", item, {"Content-Type": "application/merge-patch+json"}, b'{"name": null}'
    yield "DELETE", item, {"If-Match": '"99"'}, b""
    yield "DELETE", item, {"If-Match": "nonsense"}, b""
    yield "PUT", item, json_type, b"{}"
    yield "DELETE", "/tutorials", {}, b""


async def test_direct_answers_equal_fastapi_routings_answers(
    settings: Settings, database: Database, make_client: ClientFactory
) -> None:
    direct = create_app(settings, database)
    routed = _without_direct_routes(create_app(settings, database))
    async with make_client(direct) as client, make_client(routed) as other:
        created = await create(client, tags=["python"], description="about a tutorial")
        tutorial_id, etag = created.json()["tutorial_id"], created.headers["etag"]
        for number, (method, path, headers, body) in enumerate(_requests(tutorial_id, etag)):
            same_id = {**headers, "X-Request-ID": f"compare-{number}"}
            mine = await client.request(method, path, headers=same_id, content=body)
            theirs = await other.request(method, path, headers=same_id, content=body)
            assert _answer(mine) == _answer(theirs), (method, path, headers)
        still = await client.get(f"/tutorials/{tutorial_id}")
        assert still.json() == created.json()  # none of the refused writes changed anything


def _recording_app(seen: list[str]) -> FastAPI:
    """A tiny app: one plain route at /items/{item_id:int} (GET), the rest FastAPI's."""
    router = APIRouter(route_class=PlainRoute)

    class Refused(LookupError):
        pass

    @router.get("/items/{item_id:int}")
    async def item(request: Request) -> Response:
        seen.append(f"direct {request.path_params['item_id']} {request.scope['route'].path}")
        if request.path_params["item_id"] == 0:
            raise Refused("zero")
        if request.path_params["item_id"] == 13:
            raise RuntimeError("unlucky")
        return PlainTextResponse("item")

    app = FastAPI()
    app.include_router(router)

    async def refused(_request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"refused: {exc}", status_code=418)

    app.add_exception_handler(LookupError, refused)  # a base class of `Refused`

    @app.get("/items/{item_id:int}/other")
    async def fastapi_route() -> str:
        return "routed"

    class ThroughFastAPI:
        """Innermost: records what DirectRoutes passed on to FastAPI's routing."""

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(f"fastapi {scope['method']} {scope['path']}")
            await self.app(scope, receive, send)

    app.add_middleware(ThroughFastAPI)
    app.add_middleware(
        DirectRoutes, routes=router.routes, exception_handlers=app.exception_handlers
    )
    return app


async def test_only_full_matches_are_served_directly() -> None:
    seen: list[str] = []
    transport = httpx.ASGITransport(app=_recording_app(seen), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/items/7")).text == "item"
        assert seen == ["direct 7 /items/{item_id:int}"]  # path params and route, as routed
        seen.clear()
        assert (await client.get("/items/7/other")).json() == "routed"
        assert (await client.put("/items/7")).status_code == 405  # a path match, not the method
        assert (await client.get("/items/x")).status_code == 404
        assert seen == [
            "fastapi GET /items/7/other",
            "fastapi PUT /items/7",
            "fastapi GET /items/x",
        ]


async def test_exceptions_go_to_the_apps_handlers_by_class() -> None:
    seen: list[str] = []
    transport = httpx.ASGITransport(app=_recording_app(seen), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.get("/items/0")
        assert (refused.status_code, refused.text) == (418, "refused: zero")
        unhandled = await client.get("/items/13")
        assert unhandled.status_code == 500  # left to the outer layers, like any other bug


def test_only_plain_routes_can_be_served_directly() -> None:
    router = APIRouter()

    @router.get("/needs/{value}")
    async def needs_fastapi(value: int) -> int:
        return value

    with pytest.raises(TypeError, match="not a PlainRoute"):
        DirectRoutes(FastAPI(), routes=router.routes, exception_handlers={})
