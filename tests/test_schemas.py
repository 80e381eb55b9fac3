"""Validation before the database: what every face accepts and refuses, the same way."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tutorials.errors import InvalidInput
from tutorials.schemas import (
    MAX_ID,
    TutorialCreate,
    TutorialPatch,
    check_id,
    check_query,
    check_tags,
    invalid_input,
)


def test_normalises_what_it_accepts() -> None:
    data = TutorialCreate(
        name="  Async SQLAlchemy ",
        url="HTTPS://example.com/a?b=c",
        tags=["Python", " SQL ", "python"],
    )
    assert data.name == "Async SQLAlchemy"
    assert data.url == "https://example.com/a?b=c"
    assert data.tags == ["python", "sql"]


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"name": "nul\x00byte"}, "name"),
        ({"name": "lone \ud800 surrogate"}, "name"),
        ({"name": 5}, "name"),
        ({"name": "ok", "url": "ftp://example.com"}, "url"),
        ({"name": "ok", "url": "javascript:alert(1)"}, "url"),
        ({"name": "ok", "url": "https://"}, "url"),
        ({"name": "ok", "url": "https://exa mple.com"}, "url"),
        ({"name": "ok", "url": "https://e.com/" + "a" * 3000}, "url"),
        ({"name": "ok", "description": "x\x00"}, "description"),
        ({"name": "ok", "description": "x" * 20_001}, "description"),
        ({"name": "ok", "tags": [""]}, "tags"),
        ({"name": "ok", "tags": ["a;b"]}, "tags"),
        ({"name": "ok", "tags": ["x" * 65]}, "tags"),
        ({"name": "ok", "tags": [f"t{i}" for i in range(51)]}, "tags"),
        ({"name": "ok", "tags": "python"}, "tags"),
        ({"name": "ok", "version": 3}, "version"),
    ],
)
def test_refuses_bad_input_naming_the_field(fields: dict[str, object], bad_field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TutorialCreate.model_validate(fields)
    error = invalid_input(caught.value)
    assert isinstance(error, InvalidInput)
    assert error.errors
    assert error.errors[0].loc[0] == bad_field
    assert bad_field in error.detail


def test_patch_changes_follow_merge_patch() -> None:
    assert TutorialPatch.model_validate({}).changes() == {}
    assert TutorialPatch.model_validate({"url": None, "tags": None}).changes() == {
        "url": None,
        "tags": [],
    }
    with pytest.raises(InvalidInput, match="name cannot be null"):
        TutorialPatch.model_validate({"name": None}).changes()


@pytest.mark.parametrize("bad", [0, -1, MAX_ID + 1, 2**64, True])
def test_ids_outside_bigint_are_invalid(bad: int) -> None:
    with pytest.raises(InvalidInput):
        check_id(bad)


def test_ids_inside_bigint_pass() -> None:
    assert check_id(1) == 1
    assert check_id(MAX_ID) == MAX_ID


def test_query_and_tag_filters() -> None:
    assert check_query("  async  ") == "async"
    assert check_tags(["Python"]) == ["python"]
    for bad_query in ("", "   ", "a\x00b", "q" * 1001):
        with pytest.raises(InvalidInput):
            check_query(bad_query)
    with pytest.raises(InvalidInput):
        check_tags(["bad\x00tag"])
