"""Bearer tokens: with TUTORIALS_API_TOKENS set, writes need one (401 otherwise), reads stay
open, and the OpenAPI document says so; without tokens, nothing asks for one."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from tests.api.conftest import ClientFactory
from tests.api.helpers import fetch_rows

from tutorials.api import create_app
from tutorials.api.security import WriteGuard
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
        for path in ("/tutorials", "/tutorials/1", "/healthz", "/readyz", "/metrics", "/"):
            response = await client.get(path)
            assert response.status_code in (200, 404), path


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
