"""The service's own rules: versions, empty patches, cursors, limits, refused searches."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from tutorials import service
from tutorials.db.database import Database
from tutorials.errors import InvalidInput, NotFound, StaleVersion
from tutorials.schemas import TutorialCreate, TutorialPatch
from tutorials.settings import Settings

FORGED_CURSORS = [
    "garbage!",
    "WyJ4IiwxXQ",  # ["x",1]: no listing of ours
    "WyJpIiwiMSJd",  # ["i","1"]
    "bnVsbA",  # null
    "W10",  # []
]


async def _new(database: Database, name: str = "t", **fields: object) -> int:
    saved = await service.create(database, TutorialCreate.model_validate({"name": name, **fields}))
    return saved.tutorial_id


@pytest.mark.parametrize("cursor", FORGED_CURSORS)
async def test_forged_cursors_are_invalid_input_naming_the_cursor(
    database: Database, cursor: str
) -> None:
    for listing in (
        service.list_page(database, cursor=cursor),
        service.search(database, "word", cursor=cursor),
    ):
        with pytest.raises(InvalidInput) as caught:
            await listing
        assert [error.loc for error in caught.value.errors] == [("cursor",)]


@pytest.mark.parametrize("limit", [0, 101, -5, True])
async def test_limits_are_bounded(database: Database, limit: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.list_page(database, limit=limit)
    assert [error.loc for error in caught.value.errors] == [("limit",)]


async def test_pages_follow_their_cursor_to_the_end(database: Database) -> None:
    ids = [await _new(database, f"t{n}") for n in range(5)]
    seen: list[int] = []
    cursor = None
    while True:
        page = await service.list_page(database, limit=2, cursor=cursor)
        seen += [item.tutorial_id for item in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids


async def test_an_empty_patch_writes_nothing(database: Database) -> None:
    tutorial_id = await _new(database)
    same = await service.update(database, tutorial_id, TutorialPatch(), expected=1)
    assert same.version == 1
    with pytest.raises(StaleVersion) as caught:
        await service.update(database, tutorial_id, TutorialPatch(), expected=2)
    assert caught.value.current_version == 1
    with pytest.raises(NotFound):
        await service.update(database, tutorial_id + 1, TutorialPatch())


async def test_any_of_several_versions(database: Database) -> None:
    tutorial_id = await _new(database)
    updated = await service.update(
        database, tutorial_id, TutorialPatch(name="renamed"), expected={1, 7}
    )
    assert (updated.name, updated.version) == ("renamed", 2)
    with pytest.raises(StaleVersion, match="at version 2, not 5, 6"):
        await service.update(database, tutorial_id, TutorialPatch(name="x"), expected={5, 6})
    with pytest.raises(StaleVersion):  # an If-Match naming no version at all: nothing matches
        await service.delete(database, tutorial_id, expected=set())
    with pytest.raises(NotFound):
        await service.delete(database, tutorial_id + 1, expected=set())
    await service.delete(database, tutorial_id, expected={2})
    with pytest.raises(NotFound):
        await service.get(database, tutorial_id)


async def test_versions_outside_the_column_are_invalid(database: Database) -> None:
    tutorial_id = await _new(database)
    for bad in (0, 2**31, True):
        with pytest.raises(InvalidInput):
            await service.update(database, tutorial_id, TutorialPatch(name="x"), expected=bad)


async def test_save_overwrites_every_field_at_a_version(database: Database) -> None:
    tutorial_id = await _new(database, "a", url="https://a.io/", description="d", tags=["x"])
    data = TutorialCreate(name="b")
    saved = await service.save(database, data, tutorial_id, 1)
    assert (saved.name, saved.url, saved.description, saved.tags, saved.version) == (
        "b",
        None,
        None,
        [],
        2,
    )
    with pytest.raises(StaleVersion):
        await service.save(database, data, tutorial_id, 1)


async def test_a_search_the_parser_refuses_names_q(database: Database) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.search(database, "-" * 40 + "word")
    assert [error.loc for error in caught.value.errors] == [("q",)]
    assert await service.search(database, "-" * 10 + "word") is not None  # fewer is fine


# --- delete_matching: bulk delete by filter -------------------------------------------------


async def _names(database: Database) -> list[str]:
    page = await service.list_page(database, limit=100)
    return [item.name for item in page.items]


async def _catalog(database: Database) -> None:
    await _new(database, "async python", tags=["python", "draft"])
    await _new(database, "sync python", tags=["python"])
    await _new(database, "postgres internals", tags=["sql", "draft"])
    await _new(database, "async rust", description="not python at all")


async def test_delete_matching_a_dry_run_counts_and_deletes_nothing(database: Database) -> None:
    await _catalog(database)
    assert await service.delete_matching(database, tags=["draft"], dry_run=True) == 2
    assert await service.delete_matching(database, query="async", dry_run=True) == 2
    assert await service.delete_matching(database, everything=True, dry_run=True) == 4
    assert len(await _names(database)) == 4


async def test_delete_matching_deletes_what_every_filter_selects(database: Database) -> None:
    await _catalog(database)
    # the tag selects two, the search one of them: every filter must hold (AND, not OR)
    assert await service.delete_matching(database, tags=["draft"], query="postgres") == 1
    assert await _names(database) == ["async python", "sync python", "async rust"]
    assert await service.delete_matching(database, tags=["python", "draft"]) == 1
    assert await _names(database) == ["sync python", "async rust"]
    assert await service.delete_matching(database, tags=["Python"], query="sync") == 1
    assert await _names(database) == ["async rust"]
    assert await service.delete_matching(database, query="python") == 1  # the description
    assert await service.delete_matching(database, tags=["nothing"]) == 0
    assert await service.delete_matching(database, everything=True) == 0
    assert await _names(database) == []


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({}, "give a filter (tags, a query), or ask for every tutorial"),
        ({"tags": ["", ""]}, "give a filter (tags, a query), or ask for every tutorial"),
        ({"everything": True, "tags": ["x"]}, "either a filter (tags, a query) or every"),
        ({"everything": True, "query": "x"}, "either a filter (tags, a query) or every"),
    ],
)
async def test_delete_matching_without_a_filter_needs_everything(
    database: Database, filters: dict[str, object], message: str
) -> None:
    await _catalog(database)
    with pytest.raises(InvalidInput) as caught:
        await service.delete_matching(database, **filters)  # type: ignore[arg-type]
    assert message in caught.value.detail
    assert [error.loc for error in caught.value.errors] == [("all",)]
    assert len(await _names(database)) == 4


async def test_delete_matching_refuses_bad_filters_naming_them(database: Database) -> None:
    await _catalog(database)
    for filters, field in (({"tags": ["a,b"]}, "tag"), ({"query": " "}, "q")):
        with pytest.raises(InvalidInput) as caught:
            await service.delete_matching(database, **filters)  # type: ignore[arg-type]
        assert caught.value.errors[0].loc[0] == field
    for dry_run in (True, False):  # the full-text parser refuses it: on both statements
        with pytest.raises(InvalidInput) as refused:
            await service.delete_matching(database, query="-" * 40 + "word", dry_run=dry_run)
        assert [error.loc for error in refused.value.errors] == [("q",)]
    assert len(await _names(database)) == 4


# --- Browsing: orders, search as you type, counts, tags ----------------------------------------


async def _walk(database: Database, order: str, limit: int = 2, **filters: object) -> list[int]:
    """Every id a listing in `order` pages through, following its cursors."""
    seen: list[int] = []
    cursor = None
    while True:
        page = await service.list_page(
            database,
            limit=limit,
            cursor=cursor,
            order=order,
            **filters,  # type: ignore[arg-type]
        )
        seen += [item.tutorial_id for item in page.items]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


async def test_each_order_pages_through_every_tutorial_once_in_its_order(
    database: Database,
) -> None:
    names = ["beta", "Alpha", "gamma", "alpha", "Émile", "delta"]
    ids = [await _new(database, name) for name in names]
    touched = ids[2]  # updated last: first in the `updated` order
    await service.update(database, touched, TutorialPatch.model_validate({"description": "x"}))
    by_name = [ids[i] for i in sorted(range(len(names)), key=lambda i: (names[i].lower(), ids[i]))]
    assert await _walk(database, "oldest") == ids
    assert await _walk(database, "newest") == ids[::-1]
    assert await _walk(database, "name") == by_name
    updated = await _walk(database, "updated")
    assert updated[0] == touched and sorted(updated) == sorted(ids)


async def test_orders_filter_by_tags_and_keep_their_cursors_to_themselves(
    database: Database,
) -> None:
    tagged = [await _new(database, f"n{n}", tags=["python 3"]) for n in range(3)]
    await _new(database, "other", tags=["rust"])
    assert await _walk(database, "name", tags=["Python 3"]) == tagged
    first = await service.list_page(database, limit=1, order="name")
    assert first.next_cursor is not None
    for other in ("oldest", "newest", "updated"):
        with pytest.raises(InvalidInput) as caught:
            await service.list_page(database, cursor=first.next_cursor, order=other)
        assert [error.loc for error in caught.value.errors] == [("cursor",)]


@pytest.mark.parametrize("order", ["newest", "name", "updated"])
@pytest.mark.parametrize("cursor", FORGED_CURSORS)
async def test_forged_cursors_of_every_order_are_invalid_input(
    database: Database, order: str, cursor: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.list_page(database, cursor=cursor, order=order)
    assert [error.loc for error in caught.value.errors] == [("cursor",)]


async def test_an_unknown_order_is_invalid_input_naming_sort(database: Database) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.list_page(database, order="random")
    assert [error.loc for error in caught.value.errors] == [("sort",)]


async def test_a_long_non_ascii_name_still_gives_a_short_cursor(database: Database) -> None:
    for n in range(3):
        await _new(database, "日本語のチュートリアル" * 20 + str(n))
    page = await service.list_page(database, limit=1, order="name")
    assert page.next_cursor is not None and len(page.next_cursor) <= 512
    assert len(await _walk(database, "name", limit=1)) == 3


async def test_search_as_you_type_reads_the_last_word_as_a_prefix(database: Database) -> None:
    wanted = await _new(database, "Async SQLAlchemy sessions", description="Tutorials on pools")
    await _new(database, "Rust ownership")
    for typed in ("sqlalch", "async sqlal", "tutoria", "sess", "SQLAlchemy"):
        page = await service.search(database, typed, prefix=True)
        assert [item.tutorial_id for item in page.items] == [wanted], typed
    assert (await service.search(database, "sqlalch")).items == []  # whole words without it


@pytest.mark.parametrize(
    ("query", "prefix"),
    [
        ("sqlalch", "'sqlalch':* | 'sqlalc':* | 'sqlal':*"),
        ("async db", "'db':*"),
        ("it's", "'it''s':*"),
        ('"open phrase', None),
        ("word -not", None),
        ("this or", None),
        ("c ++", None),
    ],
)
def test_prefix_terms_take_only_a_plain_last_word(query: str, prefix: str | None) -> None:
    text, alternatives = service.prefix_terms(query)
    assert alternatives == prefix
    if prefix is None:
        assert text == query


async def test_prefix_search_of_stop_words_and_punctuation_finds_without_failing(
    database: Database,
) -> None:
    wanted = await _new(database, "The theory of C++")
    for typed in ("the", "theor", "c++", "it's", "a\\'b"):
        page = await service.search(database, typed, prefix=True)
        assert all(item.tutorial_id == wanted for item in page.items), typed
    assert (await service.search(database, "theor", prefix=True)).items[0].tutorial_id == wanted


async def test_prefix_search_pages_with_cursors_of_its_own(database: Database) -> None:
    ids = {await _new(database, f"Postgres tuning {n}") for n in range(5)}
    seen: set[int] = set()
    cursor = None
    while True:
        page = await service.search(database, "postg", prefix=True, limit=2, cursor=cursor)
        seen |= {item.tutorial_id for item in page.items}
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    first = await service.search(database, "postg", prefix=True, limit=2)
    with pytest.raises(InvalidInput):
        await service.search(database, "postg", limit=2, cursor=first.next_cursor)


async def test_counts_match_what_listings_and_searches_page_through(database: Database) -> None:
    for n in range(4):
        await _new(database, f"python {n}", tags=["python"] if n % 2 else [])
    assert await service.count_found(database) == service.Found(4, True)
    assert await service.count_found(database, tags=["python"]) == service.Found(2, True)
    assert await service.count_found(database, query="pyth", prefix=True) == service.Found(4, True)
    assert await service.count_found(database, query="pyth") == service.Found(0, True)


async def test_a_search_count_stops_at_what_the_search_ranks(
    database_url: URL, settings: Settings
) -> None:
    bounded = Database.from_url(database_url, settings.model_copy(update={"search_candidates": 2}))
    try:
        for n in range(3):
            await _new(bounded, f"python {n}")
        assert await service.count_found(bounded, query="python") == service.Found(2, False)
        assert await service.count_found(bounded, query="python 1") == service.Found(1, True)
    finally:
        await bounded.dispose()


async def test_tag_counts_list_the_most_used_tags_first(database: Database) -> None:
    await _new(database, "a", tags=["python", "sql"])
    await _new(database, "b", tags=["python", "עברית"])
    await _new(database, "c", tags=["python 3", "sql"])
    assert await service.tag_counts(database) == [
        ("python", 2),
        ("sql", 2),
        ("python 3", 1),
        ("עברית", 1),
    ]
    assert await service.tag_counts(database, limit=1) == [("python", 2)]
    for limit in (0, service.TAGS_LISTED_MAX + 1, True):
        with pytest.raises(InvalidInput):
            await service.tag_counts(database, limit=limit)
