"""Bearer tokens: with TUTORIALS_API_TOKENS set, writes need one (401 otherwise), reads stay
open, and the OpenAPI document says so; without tokens, nothing asks for one."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from tests.api.conftest import ClientFactory
from tests.api.helpers import concrete, fetch_rows, route_table

from tutorials.api import create_app
from tutorials.api.security import (
    OPEN_TO_ANYONE,
    SAFE_METHODS,
    WriteGuard,
    WriteGuardMiddleware,
    open_routes,
)
from tutorials.db.session import Database
from tutorials.settings import Settings

TOKENS = ("first-token", "second-token")


@pytest.fixture
def secured(settings: Settings, database: Database) -> FastAPI:
    tokens = [SecretStr(token) for token in TOKENS]
    return create_app(settings.model_copy(update={"api_tokens": tokens}), database)


async def test_writes_without_a_valid_token_are_401_and_change_nothing(
    secured: FastAPI, make_client: ClientFactory, dsn: str
) -> None:
    async with make_client(secured) as client:
        created = await client.post(
            "/tutorials", json={"name": "kept"}, headers={"Authorization": "Bearer first-token"}
        )
        assert created.status_code == 201
        location = created.headers["location"]
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer first-token-and-more"},
            {"Authorization": "Bearer "},
            {"Authorization": "Basic Zmlyc3QtdG9rZW46"},
            {"Authorization": "first-token"},
        ):
            responses = [
                await client.post("/tutorials", json={"name": "x"}, headers=headers),
                await client.patch(location, json={"name": "x"}, headers=headers),
                await client.delete(location, headers=headers),
            ]
            for response in responses:
                assert response.status_code == 401, (headers, response.request.method)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert "token" in response.json()["detail"]
    assert [row["name"] for row in await fetch_rows(dsn)] == ["kept"]


async def test_any_configured_token_is_accepted_and_the_scheme_is_case_insensitive(
    secured: FastAPI, make_client: ClientFactory
) -> None:
    async with make_client(secured) as client:
        first = await client.post(
            "/tutorials", json={"name": "a"}, headers={"Authorization": "bearer first-token"}
        )
        second = await client.patch(
            first.headers["location"],
            json={"name": "b"},
            headers={"Authorization": "Bearer second-token"},
        )
    assert (first.status_code, second.status_code) == (201, 200)


async def test_auth_is_checked_before_the_body(
    secured: FastAPI, make_client: ClientFactory
) -> None:
    async with make_client(secured) as client:
        response = await client.post(
            "/tutorials", content=b"not json", headers={"Content-Type": "text/plain"}
        )
    assert response.status_code == 401


async def test_reads_stay_open(secured: FastAPI, make_client: ClientFactory) -> None:
    async with make_client(secured) as client:
        for path, status in (
            ("/tutorials", 200),
            ("/tutorials/1", 404),  # no such tutorial: answered, not refused
            ("/tutorials/export", 200),
            ("/healthz", 200),
            ("/readyz", 200),
            ("/metrics", 200),
            ("/", 200),
        ):
            for method in ("GET", "HEAD"):
                response = await client.request(method, path)
                assert response.status_code == status, (method, path)


async def test_the_openapi_document_declares_bearer_auth_only_when_tokens_are_set(
    secured: FastAPI, app: FastAPI
) -> None:
    document = secured.openapi()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in ("post", "patch", "delete"):
                assert operation["security"] == [{"bearerAuth": []}], (path, method)
                assert "401" in operation["responses"]
            else:
                assert "security" not in operation
    open_document = app.openapi()
    assert "securitySchemes" not in open_document["components"]
    assert all(
        "security" not in operation and "401" not in operation["responses"]
        for item in open_document["paths"].values()
        for operation in item.values()
    )


def test_the_guard_compares_every_token_and_never_echoes_one() -> None:
    guard = WriteGuard([SecretStr("alpha"), SecretStr("beta")])
    assert guard.enabled
    assert guard.allows("Bearer alpha")
    assert guard.allows("Bearer   beta  ")
    assert not guard.allows("Bearer alph")
    assert not guard.allows("Bearer")
    assert not guard.allows(None)
    assert "alpha" not in repr(vars(guard))
    assert WriteGuard([]).allows(None)  # no tokens: writes are open


async def test_no_tokens_means_open_writes(client: httpx.AsyncClient) -> None:
    response = await client.post("/tutorials", json={"name": "open"})
    assert response.status_code == 201


#: A value for each path parameter a route may have (a new one must be added here).
PATH_VALUES = {"tutorial_id": "1", "name": "app.js"}


def _unsafe_requests(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method, concrete(path, PATH_VALUES))
        for path, methods in route_table(app).items()
        for method in sorted(methods)
        if method not in SAFE_METHODS
    ]


async def test_every_unsafe_route_refuses_a_request_without_a_token(
    secured: FastAPI, make_client: ClientFactory, dsn: str
) -> None:
    """Walks the app's routes: whatever writes exist, none answers without a valid token."""

    @secured.post("/added-after-the-app-was-built")
    async def added() -> str:  # declared without any thought of tokens
        raise AssertionError("the guard let a write through")

    writes = _unsafe_requests(secured)
    assert len(writes) >= 6  # POST, PATCH and DELETE of tutorials, bulk delete, import, added
    assert ("POST", "/added-after-the-app-was-built") in writes
    async with make_client(secured) as client:
        for method, path in writes:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response = await client.request(
                    method, path, headers={**headers, "Content-Type": "application/json"}
                )
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == 'Bearer realm="tutorials"'
                assert response.headers["content-type"] == "application/problem+json"
    assert await fetch_rows(dsn) == []
    # The only open routes: the page's sign-in and sign-out, which check the token
    # themselves (and refused above, like every write, without a valid one).
    opened = open_routes(secured)
    assert all(isinstance(route, APIRoute) for route in opened)
    assert sorted((r.path, *sorted(getattr(r, "methods", ()))) for r in opened) == [
        ("/session", "DELETE"),
        ("/session", "POST"),
    ]


async def test_only_a_route_declared_open_takes_writes_without_a_token() -> None:
    app = FastAPI()

    @app.post("/sign-in", openapi_extra=OPEN_TO_ANYONE)
    async def sign_in() -> Response:
        return PlainTextResponse("open")

    @app.post("/guarded")
    async def guarded(request: Request) -> Response:
        return PlainTextResponse("guarded")

    # Declared open inside an included router: not looked for, so it stays guarded.
    router = APIRouter()

    @router.post("/nested", openapi_extra=OPEN_TO_ANYONE)
    async def nested() -> Response:
        raise AssertionError("the guard let a write through")

    app.include_router(router)
    guard = WriteGuard([SecretStr("token")])
    wrapped = WriteGuardMiddleware(app, guard=guard, routes=app.routes)
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/sign-in")).text == "open"
        assert (await client.post("/guarded")).status_code == 401
        # Requests that run no route: the router's 405 and 404, nothing asked, nothing run.
        assert (await client.put("/sign-in")).status_code == 405
        assert (await client.post("/nowhere")).status_code == 404
        assert (await client.post("/nested")).status_code == 401
        allowed = await client.post("/guarded", headers={"Authorization": "Bearer token"})
        assert allowed.text == "guarded"
    document = app.openapi()
    assert document["paths"]["/sign-in"]["post"]["security"] == []
