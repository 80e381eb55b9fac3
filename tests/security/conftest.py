"""Fixtures for the hostile-input and security tests: a seeded database, an in-process API.

The corpus lives in `corpus.py`; every test takes the table's fingerprint before and after
(`fingerprint`) to prove that refused input changed nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from tests.security.corpus import seed

from tutorials.api import create_app
from tutorials.db.session import Database
from tutorials.settings import Settings

TOKEN = "sec-token-0123456789abcdef"


@pytest.fixture
async def seeded(dsn: str) -> str:
    """This test's database with three ordinary rows; its DSN."""
    await seed(dsn)
    return dsn


@pytest.fixture
def api_app(settings: Settings, database: Database) -> FastAPI:
    """The app on this test's database, writes open (no tokens), default limits."""
    return create_app(settings, database)


@pytest.fixture
async def api(api_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client (httpx over ASGI) for `api_app`."""
    transport = httpx.ASGITransport(app=api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def guarded_app(database: Database) -> FastAPI:
    """The app with a write token configured."""
    settings = Settings(_env_file=None, auto_migrate=False, api_tokens=TOKEN)  # type: ignore[call-arg]
    return create_app(settings, database)


@pytest.fixture
async def guarded_api(guarded_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=guarded_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
