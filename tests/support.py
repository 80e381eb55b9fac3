"""Plumbing shared by tests: running coroutines from sync code, plain DSNs, admin statements."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import asyncpg
from sqlalchemy.engine import URL

T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, in a thread with its own event loop.

    Keeps fixture plumbing off the test's own loop (and works from sync tests too).
    """

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def asyncpg_dsn(url: URL) -> str:
    """The plain libpq/asyncpg form of a SQLAlchemy URL (password included)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def admin_execute(url: URL, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()
