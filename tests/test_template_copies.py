"""The per-test databases (tests/databases.py): a copy given back is handed out again only as
the template, empty and with its sequences restarted; a changed schema or a session left open
gets a new copy instead."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import URL
from tests.databases import TemplateCopies
from tests.support import asyncpg_dsn, run_async


@pytest.fixture
def copies(server_url: URL, template_name: str) -> Iterator[TemplateCopies]:
    made = TemplateCopies(server_url, template_name)
    yield made
    made.close()


def _execute(server_url: URL, name: str, *statements: str) -> object:
    async def run() -> object:
        connection = await asyncpg.connect(asyncpg_dsn(server_url.set(database=name)))
        try:
            result: object = None
            for statement in statements:
                result = await connection.fetchval(statement)
            return result
        finally:
            await connection.close()

    return run_async(run)


INSERT = "INSERT INTO tutorials (name) VALUES ('left behind') RETURNING tutorial_id"


def test_a_copy_comes_back_empty_with_its_ids_restarted(
    copies: TemplateCopies, server_url: URL
) -> None:
    first = copies.take()
    assert _execute(server_url, first, INSERT, INSERT) == 2
    copies.give_back(first)
    again = copies.take()
    assert again == first
    assert _execute(server_url, again, "SELECT count(*) FROM tutorials") == 0
    assert _execute(server_url, again, INSERT) == 1
    copies.give_back(again)


@pytest.mark.parametrize(
    "change",
    [
        "CREATE INDEX tutorials_extra ON tutorials (url)",
        "ALTER TABLE tutorials ALTER COLUMN description SET DEFAULT 'x'",
        "CREATE TABLE scratch (id int)",
        "UPDATE alembic_version SET version_num = 'elsewhere'",
        "DROP TRIGGER tutorials_search ON tutorials",
        "ALTER TABLE tutorials DISABLE TRIGGER tutorials_search",
    ],
)
def test_a_copy_whose_schema_changed_is_not_handed_out_again(
    copies: TemplateCopies, server_url: URL, change: str
) -> None:
    first = copies.take()
    _execute(server_url, first, change)
    copies.give_back(first)
    assert copies.take() != first


def test_a_copy_someone_is_still_connected_to_is_not_handed_out_again(
    copies: TemplateCopies, server_url: URL
) -> None:
    first = copies.take()

    async def linger() -> bool:
        connection = await asyncpg.connect(asyncpg_dsn(server_url.set(database=first)))
        try:
            copies.give_back(first)  # runs in a thread of its own: this connection stays open
            return copies.take() != first
        finally:
            connection.terminate()

    assert run_async(linger)
