"""The library face: the tutorial's `save_tutorial` and friends, on the default database.

Each call is one unit of work on the process's default database (built lazily from settings on
first use), validated first, then run on the fast path (`Database.fast`): every call here is
one statement in autocommit — one round trip, committed before the call returns — plus, for an
update or a versioned delete that matched nothing, one read to say whether the row is missing
or stale. To work inside a transaction of your own, open `get_session()` and call the
`tutorials.repository` functions with that session instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tutorials import repository
from tutorials.db.session import default_database
from tutorials.errors import NotFound
from tutorials.models import Tutorial
from tutorials.repository import Page
from tutorials.schemas import (
    TutorialCreate,
    TutorialPatch,
    check_id,
    check_query,
    check_tags,
    check_version,
    invalid_input,
)
from tutorials.settings import get_settings

if TYPE_CHECKING:
    from tutorials.db.session import Connection


def creation_values(tutorial: Tutorial | TutorialCreate) -> dict[str, Any]:
    """Validate a new tutorial's fields the same way every face does; the values to insert."""
    if isinstance(tutorial, Tutorial):
        fields = {
            "name": tutorial.name,
            "url": tutorial.url,
            "description": tutorial.description,
            "tags": tutorial.tags if tutorial.tags is not None else [],
        }
        try:
            tutorial = TutorialCreate.model_validate(fields)
        except ValidationError as exc:
            raise invalid_input(exc) from None
    return tutorial.model_dump()


async def save_tutorial(tutorial: Tutorial | TutorialCreate) -> Tutorial:
    """Store a tutorial and return it as stored (with `tutorial_id`, timestamps, `version`).

    A `Tutorial` that already has a `tutorial_id` is an update of that row; if it also carries
    a `version`, the update only happens if the row is still at that version (`StaleVersion`
    otherwise), so read-modify-save cannot silently overwrite someone else's change.
    """
    values = creation_values(tutorial)
    database = await default_database()
    existing_id = tutorial.tutorial_id if isinstance(tutorial, Tutorial) else None
    if existing_id is None:
        return await database.fast(lambda connection: repository.add(connection, values))
    tutorial_id = check_id(existing_id)
    expected = check_version(tutorial.version if isinstance(tutorial, Tutorial) else None)
    return await database.fast(
        lambda connection: repository.update(
            connection, tutorial_id, values, expected_version=expected
        )
    )


async def get_tutorial(tutorial_id: int) -> Tutorial | None:
    """The tutorial with this id, or None."""
    check_id(tutorial_id)
    database = await default_database()
    return await database.fast(
        lambda connection: repository.get(connection, tutorial_id), idempotent=True
    )


async def update_tutorial(
    tutorial_id: int, patch: TutorialPatch, *, expected_version: int | None = None
) -> Tutorial:
    expected_version = check_version(expected_version)
    """Apply a partial update; `NotFound` / `StaleVersion` as the repository says."""
    check_id(tutorial_id)
    changes = patch.changes()
    database = await default_database()

    if not changes and expected_version is None:
        found = await database.fast(
            lambda connection: repository.get(connection, tutorial_id), idempotent=True
        )
        if found is None:
            raise NotFound(f"tutorial {tutorial_id} not found")
        return found

    async def work(connection: Connection) -> Tutorial:
        return await repository.update(
            connection, tutorial_id, changes, expected_version=expected_version
        )

    return await database.fast(work)


async def delete_tutorial(tutorial_id: int, *, expected_version: int | None = None) -> bool:
    expected_version = check_version(expected_version)
    """Delete a tutorial; True if it existed."""
    check_id(tutorial_id)
    database = await default_database()
    return await database.fast(
        lambda connection: repository.delete(
            connection, tutorial_id, expected_version=expected_version
        )
    )


async def list_tutorials(
    *, limit: int = repository.DEFAULT_PAGE, cursor: str | None = None, tags: Sequence[str] = ()
) -> Page:
    """One keyset page of tutorials, oldest first; pass `next_cursor` back for the next."""
    tags = check_tags(tags)
    database = await default_database()
    return await database.fast(
        lambda connection: repository.list_page(connection, limit=limit, cursor=cursor, tags=tags),
        idempotent=True,
    )


async def search_tutorials(
    query: str,
    *,
    limit: int = repository.DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
) -> Page:
    """Ranked full-text search; pass `next_cursor` back for the next page."""
    query, tags = check_query(query), check_tags(tags)
    candidates = get_settings().search_candidates
    database = await default_database()
    return await database.fast(
        lambda connection: repository.search(
            connection, query, limit=limit, cursor=cursor, tags=tags, candidates=candidates
        ),
        idempotent=True,
    )
