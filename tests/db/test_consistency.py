"""The WAL position a task must read at: LSNs, what a write records, what a block asks for."""

from __future__ import annotations

import asyncio
from contextvars import Context

import pytest

from tutorials.db import consistency
from tutorials.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/16B3748", 0x16B3748), ("16/B374D848", (0x16 << 32) | 0xB374D848)],
)
def test_lsns_read_and_written_as_postgresql_does(text: str, value: int) -> None:
    assert consistency.parse_lsn(text) == value
    assert consistency.format_lsn(value) == text
    assert consistency.parse_lsn(text.lower()) == value


@pytest.mark.parametrize("text", ["", "16", "0/", "/1", "0/123456789", "g/1", "1/2/3", "-1/2"])
def test_anything_else_is_invalid_input_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        consistency.parse_lsn(text, field="after_lsn")
    assert [(error.loc, error.msg) for error in raised.value.errors] == [
        (("after_lsn",), consistency.LSN_RULE)
    ]


def _fresh() -> tuple[int | None, str | None]:
    return consistency.required(), consistency.last_commit_lsn()


def test_a_fresh_context_asks_for_nothing() -> None:
    assert Context().run(_fresh) == (None, None)


def test_commits_raise_the_position_and_reads_after_add_to_it() -> None:
    def scenario() -> list[object]:
        seen: list[object] = []
        consistency.note_commit(100)
        consistency.note_commit(50)  # an older one changes nothing
        seen += [consistency.required(), consistency.last_commit_lsn()]
        with consistency.reading_after("0/C8"):  # 200: more than this task wrote
            seen.append(consistency.required())
            consistency.note_commit(300)  # a write inside the block belongs to the task
        seen.append(consistency.required())
        with consistency.reading_after(None):
            seen.append(consistency.required())
        consistency.note_commit(None)  # committed, position unknown: only the primary
        seen.append(consistency.required() == consistency.PRIMARY_ONLY)
        return seen

    assert Context().run(scenario) == [100, "0/64", 200, 300, 300, True]


async def test_a_request_position_is_its_own() -> None:
    async def request(after: int | None, commit: int | None) -> tuple[int | None, int | None]:
        position = consistency.begin(after)
        if commit is not None:
            consistency.note_commit(commit)
        return consistency.required(), position.committed

    answers = await asyncio.gather(
        asyncio.create_task(request(10, None), context=Context()),
        asyncio.create_task(request(None, 20), context=Context()),
        asyncio.create_task(request(30, 5), context=Context()),
    )
    assert answers == [(10, None), (20, 20), (30, 5)]
