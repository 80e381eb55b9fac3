"""Each class of the error map, provoked for real on a real server and classified by SQLSTATE."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from tutorials.db.session import Database
from tutorials.errors import (
    Conflict,
    InvalidInput,
    RetryableConflict,
    Timeout,
    TutorialsError,
    Unavailable,
    classify,
    sqlstate_of,
)
from tutorials.settings import Settings


async def _raw_error(database: Database, *statements: str) -> DBAPIError:
    """Run statements on a bare connection (no unit of work) and return the driver's error."""
    async with database.engine.connect() as connection:
        with pytest.raises(DBAPIError) as caught:
            for statement in statements:
                await connection.execute(text(statement))
    return caught.value


@pytest.mark.parametrize(
    ("statements", "code", "kind"),
    [
        (
            [
                "INSERT INTO tutorials (name, url) VALUES ('a', 'https://x.io')",
                "INSERT INTO tutorials (name, url) VALUES ('b', 'https://x.io')",
            ],
            "23505",
            Conflict,
        ),
        (["INSERT INTO tutorials (name) VALUES (NULL)"], "23502", InvalidInput),
        (["INSERT INTO tutorials (name) VALUES ('   ')"], "23514", InvalidInput),
        ([f"INSERT INTO tutorials (name) VALUES ('{'x' * 300}')"], "22001", InvalidInput),
        (["SELECT 2147483647::int + 1"], "22003", InvalidInput),
        (["SELECT 'abc'::bigint"], "22P02", InvalidInput),
        (["SELECT convert_from('\\x00'::bytea, 'UTF8')"], "22021", InvalidInput),
        (["SET statement_timeout = 50", "SELECT pg_sleep(2)"], "57014", Timeout),
        (
            ["SET TRANSACTION READ ONLY", "INSERT INTO tutorials (name) VALUES ('ro')"],
            "25006",
            Unavailable,
        ),
    ],
)
async def test_sqlstate_classification(
    database: Database, statements: list[str], code: str, kind: type[TutorialsError]
) -> None:
    error = await _raw_error(database, *statements)
    assert sqlstate_of(error) == code
    domain = classify(error)
    assert type(domain) is kind
    assert domain is not None
    assert "INSERT" not in domain.detail and "SELECT" not in domain.detail


async def test_unique_url_gets_a_precise_message(database: Database) -> None:
    error = await _raw_error(
        database,
        "INSERT INTO tutorials (name, url) VALUES ('a', 'https://x.io')",
        "INSERT INTO tutorials (name, url) VALUES ('b', 'https://x.io')",
    )
    domain = classify(error)
    assert isinstance(domain, Conflict)
    assert domain.detail == "a tutorial with this url already exists"


async def test_serialization_failure_is_retryable(database: Database) -> None:
    await _seed(database)
    async with database.engine.connect() as first, database.engine.connect() as second:
        for connection in (first, second):
            await connection.execute(text("BEGIN ISOLATION LEVEL SERIALIZABLE"))
            await connection.execute(text("SELECT name FROM tutorials WHERE tutorial_id = 1"))
        await first.execute(text("UPDATE tutorials SET name = 'one' WHERE tutorial_id = 1"))
        await first.commit()
        with pytest.raises(DBAPIError) as caught:
            await second.execute(text("UPDATE tutorials SET name = 'two' WHERE tutorial_id = 1"))
    assert sqlstate_of(caught.value) == "40001"
    assert isinstance(classify(caught.value), RetryableConflict)


async def test_deadlock_is_retryable(database: Database) -> None:
    await _seed(database, rows=2)
    async with database.engine.connect() as first, database.engine.connect() as second:
        await first.execute(text("UPDATE tutorials SET name = 'a' WHERE tutorial_id = 1"))
        await second.execute(text("UPDATE tutorials SET name = 'b' WHERE tutorial_id = 2"))
        results = await asyncio.gather(
            first.execute(text("UPDATE tutorials SET name = 'a' WHERE tutorial_id = 2")),
            second.execute(text("UPDATE tutorials SET name = 'b' WHERE tutorial_id = 1")),
            return_exceptions=True,
        )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert sqlstate_of(failures[0]) == "40P01"
    assert isinstance(classify(failures[0]), RetryableConflict)


async def test_refused_connection_is_unavailable(settings: Settings) -> None:
    closed = URL.create("postgresql+asyncpg", username="postgres", host="127.0.0.1", port=1)
    database = Database.from_url(closed, settings)
    try:
        with pytest.raises(Unavailable):
            async with database.session() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await database.dispose()


async def test_pool_timeout_is_unavailable(database_url: URL) -> None:
    tight = Settings(_env_file=None, session_pool_size=1, pool_timeout=0.2)  # type: ignore[call-arg]
    database = Database.from_url(database_url, tight)
    try:
        async with database.engine.connect() as holder:
            await holder.execute(text("SELECT 1"))
            with pytest.raises(Unavailable, match="no database connection became free"):
                async with database.session() as session:
                    await session.execute(text("SELECT 1"))
    finally:
        await database.dispose()


def test_unknown_errors_are_not_classified() -> None:
    assert classify(ValueError("a bug")) is None
    assert classify(KeyError("another")) is None


async def _seed(database: Database, rows: int = 1) -> None:
    async with database.session() as session:
        for index in range(rows):
            await session.execute(
                text("INSERT INTO tutorials (name) VALUES (:name)"), {"name": f"seed {index}"}
            )


async def test_missing_database_and_bad_login_are_unavailable(
    database_url: URL, settings: Settings
) -> None:
    for url in (
        database_url.set(database="tutorials_no_such_database"),
        database_url.set(username="no_such_role_for_tutorials"),
    ):
        database = Database.from_url(url, settings)
        try:
            with pytest.raises(Unavailable):
                async with database.session() as session:
                    await session.execute(text("SELECT 1"))
        finally:
            await database.dispose()
