"""Hostile input through the library face: refused as `InvalidInput` naming the problem, or
stored literally; never a driver error, never a change anywhere else.

Each test walks a whole family of the corpus on one database and reports every input that was
mishandled at once (a list of failures), rather than one database per input: same coverage, a
fraction of the time.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.engine import URL
from tests.security.corpus import (
    BAD_TEXT,
    FORGED_CURSORS,
    INJECTION,
    OVER_LONG,
    fingerprint,
    is_tag,
    matching_ids,
)

from tutorials import (
    InvalidInput,
    StaleVersion,
    Tutorial,
    TutorialPatch,
    delete_tutorial,
    get_tutorial,
    list_tutorials,
    save_tutorial,
    search_tutorials,
    update_tutorial,
)


class Refusals:
    """Feed inputs one by one; remember every one that was not refused properly."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.failures: list[str] = []
        self.checked = 0

    async def expect(
        self,
        label: str,
        call: Callable[[], Awaitable[object]],
        mentions: str,
        kinds: tuple[type[Exception], ...] = (InvalidInput,),
    ) -> None:
        self.checked += 1
        before = await fingerprint(self.dsn)
        try:
            result = await call()
        except kinds as error:
            detail = getattr(error, "detail", str(error))
            if not re.search(mentions, detail):
                self.failures.append(f"{label}: refused, but the message {detail!r} is vague")
        except Exception as error:
            self.failures.append(f"{label}: {type(error).__module__}.{type(error).__name__}")
        else:
            self.failures.append(f"{label}: accepted, returned {result!r:.80}")
        if await fingerprint(self.dsn) != before:
            self.failures.append(f"{label}: the table changed")


async def test_unstorable_text_in_every_field(library_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for label, (bad, mentions) in sorted(BAD_TEXT.items()):
        for field in ("name", "url", "description", "tags"):
            value: object = f"https://example.com/{bad}" if field == "url" else bad
            value = [value] if field == "tags" else value
            values: dict[str, object] = {"name": "ok", field: value}
            await refusals.expect(
                f"new {field} {label}", lambda v=values: save_tutorial(Tutorial(**v)), mentions
            )
            # Saving a stored tutorial with it: the library validates the whole row again.
            stored = await get_tutorial(1)
            assert stored is not None
            setattr(stored, field, value)
            await refusals.expect(
                f"stored {field} {label}", lambda s=stored: save_tutorial(s), mentions
            )
    assert refusals.failures == []
    assert refusals.checked == 2 * 4 * len(BAD_TEXT)


@pytest.mark.parametrize("label", sorted(BAD_TEXT))
def test_patch_model_refuses_unstorable_text(label: str) -> None:
    """`TutorialPatch` (what `update_tutorial` takes) refuses it at construction."""
    value, mentions = BAD_TEXT[label]
    with pytest.raises(ValueError, match=mentions):
        TutorialPatch.model_validate({"name": value})


async def test_over_long_values(library_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for label, (field, value) in sorted(OVER_LONG.items()):
        values: dict[str, object] = {"name": "ok", field: value}
        await refusals.expect(label, lambda v=values: save_tutorial(Tutorial(**v)), field)
    assert refusals.failures == []


async def test_injection_payloads_are_stored_literally(library_env: URL, seeded: str) -> None:
    before = await fingerprint(seeded)
    for payload in INJECTION:
        saved = await save_tutorial(
            Tutorial(name=payload, description=payload, url="https://x.example/?q='1'", tags=["a"])
        )
        found = await get_tutorial(saved.tutorial_id)
        assert found is not None
        assert (found.name, found.description) == (payload.strip(), payload)
        found_by_search = await search_tutorials(payload)
        # The payload is searched for as words: exactly the rows those words match.
        found = sorted(item.tutorial_id for item in found_by_search.items)
        assert found == await matching_ids(seeded, payload), payload
        tag = re.sub("[,;]", "", payload)[:64]
        if is_tag(tag):
            assert (await list_tutorials(tags=[tag])).items == [], tag  # no row carries it
        middle = await fingerprint(seeded)
        assert middle[0] == before[0] + 1 and middle[2], payload
        assert await delete_tutorial(saved.tutorial_id)
        # Only the new row came and went: the seeded rows are untouched.
        assert await fingerprint(seeded) == before, payload


async def test_ids_no_row_can_have(library_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for bad in (0, -1, 2**63, 2**64, -(2**63) - 1, "1", 1.5, None, True):
        label = repr(bad)
        await refusals.expect(f"get {label}", lambda b=bad: get_tutorial(b), "tutorial_id")
        await refusals.expect(f"delete {label}", lambda b=bad: delete_tutorial(b), "tutorial_id")
        await refusals.expect(
            f"update {label}",
            lambda b=bad: update_tutorial(b, TutorialPatch(name="x")),
            "tutorial_id",
        )
    assert refusals.failures == []


async def test_expected_versions_no_row_has_yet(library_env: URL, seeded: str) -> None:
    """Versions 0 and -1 fit the column: refused or answered as stale; nothing changes."""
    refusals = Refusals(seeded)
    for version in (0, -1):
        await refusals.expect(
            f"update if version {version}",
            lambda v=version: update_tutorial(1, TutorialPatch(name="x"), expected_version=v),
            "version",
            (InvalidInput, StaleVersion),
        )
        await refusals.expect(
            f"delete if version {version}",
            lambda v=version: delete_tutorial(1, expected_version=v),
            "version",
            (InvalidInput, StaleVersion),
        )
    assert refusals.failures == []


async def test_expected_versions_past_int32(library_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for version in (2**31, 2**63):
        await refusals.expect(
            f"update if version {version}",
            lambda v=version: update_tutorial(1, TutorialPatch(name="x"), expected_version=v),
            "version",
            (InvalidInput, StaleVersion),
        )
        await refusals.expect(
            f"delete if version {version}",
            lambda v=version: delete_tutorial(1, expected_version=v),
            "version",
            (InvalidInput, StaleVersion),
        )
    assert refusals.failures == []


async def test_forged_and_truncated_cursors(library_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    for label, cursor in sorted(FORGED_CURSORS.items()):
        await refusals.expect(f"list {label}", lambda c=cursor: list_tutorials(cursor=c), "cursor")
        await refusals.expect(
            f"search {label}", lambda c=cursor: search_tutorials("seed", cursor=c), "cursor"
        )
    real = (await list_tutorials(limit=1)).next_cursor
    assert real is not None
    for cut in range(1, len(real)):
        before = await fingerprint(seeded)
        refusal = "cursor (a prefix that still decodes to a valid cursor is a valid cursor)"
        try:
            await list_tutorials(cursor=real[:cut])
        except InvalidInput as error:
            refusal = error.detail
        assert "cursor" in refusal
        assert await fingerprint(seeded) == before
    assert refusals.failures == []


async def test_list_and_search_parameters(library_env: URL, seeded: str) -> None:
    refusals = Refusals(seeded)
    cases: list[tuple[dict[str, object], str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": 2**63}, "limit"),
        ({"tags": ["a;b"]}, "tag"),
        ({"tags": ["'; DROP TABLE tutorials; --"]}, "tag"),
        ({"tags": ["x\x00"]}, "tag"),
        ({"tags": ["bad\ud800"]}, "tag"),
        ({"tags": ["t" * 65]}, "tag"),
        ({"tags": [f"t{i}" for i in range(51)]}, "tag"),
    ]
    for kwargs, mentions in cases:
        await refusals.expect(
            f"list {kwargs!r:.60}",
            lambda k=kwargs: list_tutorials(**k),  # type: ignore[arg-type]
            mentions,
        )
        await refusals.expect(
            f"search {kwargs!r:.60}",
            lambda k=kwargs: search_tutorials("seed", **k),  # type: ignore[arg-type]
            mentions,
        )
    for query in ("", "   ", "a\x00b", "q" * 1001, "bad\ud800"):
        await refusals.expect(f"q {query!r:.40}", lambda q=query: search_tutorials(q), "q")
    assert refusals.failures == []
