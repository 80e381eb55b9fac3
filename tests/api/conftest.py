"""Fixtures for the HTTP API: an app on this test's own database, and a client talking to it
in-process (httpx over ASGI, no sockets).

The app gets the test's `database` injected, so no lifespan has to run; the `database`
fixture disposes it. `make_client` builds a client for an app with other settings or another
database (tokens, a tiny pool, an unreachable server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from tutorials.api import create_app
from tutorials.db.session import Database
from tutorials.settings import Settings

BASE_URL = "http://testserver"

ClientFactory = Callable[[FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def _client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def make_client() -> ClientFactory:
    return _client_for


@pytest.fixture
def app(settings: Settings, database: Database) -> FastAPI:
    """The app on this test's database (the `database` fixture disposes it)."""
    return create_app(settings, database)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _client_for(app) as client:
        yield client
