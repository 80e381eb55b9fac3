"""The library face: the tutorial's `save_tutorial` and friends, on the default database.

Each function is one call of the service (`tutorials.service`) on the process's default
database, built lazily from settings on first use: validated like every other face, run as
one unit of work, committed before it returns. They return `TutorialRecord`s: plain snapshots
of the stored rows, attached to no session. For a transaction of your own, open
`get_session()` and call the `tutorials.repository` functions with that session.

Call `await close_default_database()` before your program's event loop ends.

With read replicas (`TUTORIALS_REPLICA_URLS`), reads go to a replica that has replayed what
they must see: everything this task wrote before (read-your-writes within a task, by itself),
and the `after_lsn` a read is given: a record's `commit_lsn`, or `last_commit_lsn()`, carried
over from another task or process. Without replicas both are None and change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tutorials import service
from tutorials.db import consistency
from tutorials.db.consistency import reading_after
from tutorials.db.session import default_database
from tutorials.errors import NotFound
from tutorials.schemas import DEFAULT_PAGE, Page, TutorialCreate, TutorialPatch, TutorialRecord

if TYPE_CHECKING:
    from tutorials.models import Tutorial


async def save_tutorial(tutorial: Tutorial | TutorialCreate | TutorialRecord) -> TutorialRecord:
    """Store a tutorial; it comes back as stored (with `tutorial_id`, timestamps, `version`).

    A tutorial that already has a `tutorial_id` (a `TutorialRecord`, or a `Tutorial` with its
    id set) overwrites that row's fields; if it also carries a `version`, only while the row is
    still at that version (`StaleVersion` otherwise), so read-modify-save cannot silently
    overwrite someone else's change. `InvalidInput` for values no face accepts, `Conflict` when
    another tutorial has the url.
    """
    tutorial_id: int | None = None
    version: int | None = None
    if isinstance(tutorial, TutorialCreate):
        data = tutorial
    else:
        data = service.new_tutorial(
            {
                "name": tutorial.name,
                "url": tutorial.url,
                "description": tutorial.description,
                "tags": tutorial.tags if tutorial.tags is not None else [],
            }
        )
        tutorial_id, version = tutorial.tutorial_id, tutorial.version
    return await service.save(await default_database(), data, tutorial_id, version)


async def get_tutorial(tutorial_id: int, *, after_lsn: str | None = None) -> TutorialRecord | None:
    """The tutorial with this id, or None; with `after_lsn`, as of that commit or later."""
    database = await default_database()
    with reading_after(after_lsn):
        return await service.find(database, tutorial_id)


async def update_tutorial(
    tutorial_id: int, patch: TutorialPatch, *, expected_version: int | None = None
) -> TutorialRecord:
    """Apply a partial update (fields left unset stay as they are; None clears) and bump the
    version; with `expected_version`, only if the tutorial is still at it.

    `NotFound`, `StaleVersion`, `Conflict`. An empty patch changes nothing (not even the
    version) and returns the tutorial as it is.
    """
    return await service.update(
        await default_database(), tutorial_id, patch, expected=expected_version
    )


async def delete_tutorial(tutorial_id: int, *, expected_version: int | None = None) -> bool:
    """Delete a tutorial; True if it existed, False if there was none.

    With `expected_version`, only while the tutorial is still at it (`StaleVersion`).
    """
    try:
        await service.delete(await default_database(), tutorial_id, expected=expected_version)
    except NotFound:
        return False
    return True


async def delete_tutorials(
    *,
    tags: Sequence[str] = (),
    query: str | None = None,
    everything: bool = False,
    dry_run: bool = False,
) -> int:
    """Delete every tutorial carrying all `tags` and matching `query` (full-text search);
    how many were deleted, or with `dry_run` how many would be (nothing is deleted).

    With neither tags nor a query, pass `everything=True` to mean every tutorial.
    """
    return await service.delete_matching(
        await default_database(), tags=tags, query=query, everything=everything, dry_run=dry_run
    )


async def list_tutorials(
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
    after_lsn: str | None = None,
) -> Page:
    """One keyset page of tutorials, oldest first; pass `next_cursor` back for the next.
    With `after_lsn`, as of that commit or later."""
    database = await default_database()
    with reading_after(after_lsn):
        return await service.list_page(database, limit=limit, cursor=cursor, tags=tags)


async def search_tutorials(
    query: str,
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
    after_lsn: str | None = None,
) -> Page:
    """Ranked full-text search; pass `next_cursor` back for the next page. With `after_lsn`,
    as of that commit or later."""
    database = await default_database()
    with reading_after(after_lsn):
        return await service.search(database, query, limit=limit, cursor=cursor, tags=tags)


def last_commit_lsn() -> str | None:
    """Where this task's latest write committed (with read replicas; else None): pass it as
    `after_lsn` elsewhere to read at least that. Covers deletes and imports too."""
    return consistency.last_commit_lsn()
