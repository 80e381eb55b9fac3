"""Each use case of the catalog, once. Every face calls these and only parses and renders.

The library (`tutorials.library`), the command line, the HTTP API and bulk transfer all come
here, so the same request gets the same outcome on every face: the same validation and
normalisation (`tutorials.schemas`), the same version rules, the same search bounds, the same
errors. A use case is one unit of work on the `Database` it is given:

- **create**: one INSERT ... RETURNING, in autocommit (one round trip, committed on return).
- **get**: one SELECT. `NotFound` when there is no such tutorial.
- **update** (a merge patch): one UPDATE ... RETURNING, conditioned on the expected version
  when one is given (so two writers holding the same version cannot both succeed); when it
  matches nothing, one more read says whether the tutorial is missing (`NotFound`) or has moved
  on (`StaleVersion`). **An empty patch writes nothing and does not bump the version**: it
  returns the tutorial as it is, after checking the expected version like any update.
- **delete**: one DELETE, conditioned the same way.
- **delete_matching** (bulk delete): one DELETE of every tutorial carrying all the tags and
  matching the query (an export's filter), or a count of them (`dry_run`). No filter means
  every tutorial, and only when asked for by name (`everything`): an empty filter box never
  empties the catalog by accident.
- **list**: a keyset page, filtered to tutorials carrying every tag, in id order (`oldest`,
  the default), or `newest` first, by `name`, or most recently `updated` first.
- **search**: a ranked full-text page; the ranking work is bounded by the settings'
  `search_candidates` on every face. A query the full-text parser refuses is `InvalidInput`
  naming `q`. With `prefix`, the last word is the beginning of a word (search as you type:
  "sqlalch" finds SQLAlchemy).
- **count_found**: how many tutorials a listing or a search holds (a search: at most
  `search_candidates`, the matches it ranks). **tag_counts**: the most used tags.

- **restore** (of a backup, `transfer` format "backup"): every row back as it was (ids,
  timestamps, versions), into an **empty catalog only**, in one transaction: all of it or
  nothing. A catalog with tutorials in it is refused (`Conflict`) rather than merged: a merge
  by id would have to choose between two tutorials with one id, or one url under two ids, and
  whichever it chose, the result would be neither the backup nor the catalog. Empty it first
  (`delete_matching(everything=True)`, after exporting a backup of it).

Expected versions come as one number (`--if-version 3`, a library call) or as a set (an HTTP
`If-Match` listing several entity tags): with a set, the current version is read first and
the write is then conditioned on it, so a change in between is still `StaleVersion`, never a
lost update.

Cursors are opaque (a fingerprint of the listing and where its page ended), tied to the
listing that issued them (its kind, query and tags), and strictly checked: a forged, altered or
foreign one is `InvalidInput` naming `cursor`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import re
import struct
from collections.abc import AsyncIterable, Awaitable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from pydantic import ValidationError

from tutorials import repository
from tutorials.db.consistency import last_commit_lsn
from tutorials.db.database import Connection, Database
from tutorials.errors import (
    FieldError,
    InvalidInput,
    NotFound,
    StaleVersion,
    Unavailable,
    sqlstate_of,
)
from tutorials.schemas import (
    DEFAULT_PAGE,
    MAX_ID,
    VERSION_MAX,
    Page,
    TutorialCreate,
    TutorialPatch,
    TutorialRecord,
    check_id,
    check_limit,
    check_query,
    check_tags,
    check_version,
    fast_fields,
    invalid_input,
)

if TYPE_CHECKING:
    from tutorials.transfer.readers import RowError, SourceRow
    from tutorials.transfer.sql import RestoreRecord

T = TypeVar("T")

#: What a caller may expect of the stored version: nothing, one version, or any of several.
Expected: TypeAlias = "int | Set[int] | None"

#: SQLSTATEs the full-text parser raises for a query it cannot handle (too many operators in
#: a row: "tsquery stack too small", XX000; nesting too deep: "stack depth limit exceeded").
_QUERY_REFUSED = frozenset({"XX000", "54001"})


# --- Writes ---------------------------------------------------------------------------------


async def create(database: Database, data: TutorialCreate) -> TutorialRecord:
    """Store a new tutorial; it comes back as stored (id, timestamps, version 1).

    `Conflict` when another tutorial already has its url.
    """

    async def work(connection: Connection) -> TutorialRecord:
        return await repository.insert(connection, data.name, data.url, data.description, data.tags)

    return _stamped(database, await database.write(work))


async def update(
    database: Database,
    tutorial_id: int,
    patch: TutorialPatch,
    *,
    expected: Expected = None,
) -> TutorialRecord:
    """Apply a merge patch (absent = unchanged, null = cleared) and bump the version.

    `NotFound`, `StaleVersion` (the tutorial is not at an expected version), `Conflict` (the new
    url is taken). An empty patch writes nothing: see the module docstring.
    """
    return await _update(database, tutorial_id, patch.changes(), expected)


async def save(
    database: Database, data: TutorialCreate, tutorial_id: int | None, version: int | None
) -> TutorialRecord:
    """Create, or (with an id) overwrite every field of that tutorial, at `version` if given:
    the library's `save_tutorial(tutorial)`."""
    if tutorial_id is None:
        return await create(database, data)
    return await _update(database, tutorial_id, data.model_dump(), check_version(version))


async def _update(
    database: Database, tutorial_id: int, changes: dict[str, object], expected: Expected
) -> TutorialRecord:
    check_id(tutorial_id)
    single = _single(expected)

    async def work(connection: Connection) -> TutorialRecord:
        version = await _pinned(connection, tutorial_id, single, expected)
        if not changes:
            return await _unchanged(connection, tutorial_id, version)
        updated = await repository.update(
            connection, tutorial_id, changes, expected_version=version
        )
        if updated is None:
            await _missing_or_stale(connection, tutorial_id, version)
        assert updated is not None
        return updated

    return _stamped(database, await database.write(work))


async def delete(database: Database, tutorial_id: int, *, expected: Expected = None) -> None:
    """Delete a tutorial. `NotFound` when there is none, `StaleVersion` as for `update`."""
    check_id(tutorial_id)
    single = _single(expected)

    async def work(connection: Connection) -> None:
        version = await _pinned(connection, tutorial_id, single, expected)
        if not await repository.delete(connection, tutorial_id, expected_version=version):
            await _missing_or_stale(connection, tutorial_id, version)

    await database.write(work)


def _stamped(database: Database, record: TutorialRecord) -> TutorialRecord:
    """With read replicas, the record carries where its write committed (read-your-writes:
    `tutorials.db.consistency`); without them nothing is asked or set."""
    if database.replicas is not None:
        record.commit_lsn = last_commit_lsn()
    return record


async def delete_matching(
    database: Database,
    *,
    tags: Sequence[str] = (),
    query: str | None = None,
    everything: bool = False,
    dry_run: bool = False,
) -> int:
    """Delete every tutorial carrying all `tags` and matching `query` (full-text, web search
    syntax), in one statement; how many were deleted. With `dry_run`, nothing is deleted: how
    many would be.

    Without a tag or a query, `everything=True` must say that every tutorial is meant; with
    one, `everything` must not be given (`InvalidInput` either way).
    """
    tags = check_tags(tags)
    text = check_query(query) if query is not None else None
    if everything and (tags or text is not None):
        message = "either a filter (tags, a query) or every tutorial, not both"
        raise InvalidInput(f"invalid input: {message}", [FieldError(("all",), message)])
    if not everything and not tags and text is None:
        message = "give a filter (tags, a query), or ask for every tutorial"
        raise InvalidInput(f"invalid input: {message}", [FieldError(("all",), message)])

    async def work(connection: Connection) -> int:
        if dry_run:
            return await repository.count_matching(connection, tags=tags, query=text)
        return await repository.delete_matching(connection, tags=tags, query=text)

    return await _searching(database.read(work) if dry_run else database.write(work))


def _single(expected: Expected) -> int | None:
    """The one version a write is conditioned on directly, or None (nothing, or a set)."""
    if expected is None or isinstance(expected, int):
        return check_version(expected)
    for version in expected:  # an empty set: no version can match (the write never happens)
        check_version(version)
    if len(expected) == 1:
        return next(iter(expected))
    return None


async def _pinned(
    connection: Connection, tutorial_id: int, single: int | None, expected: Expected
) -> int | None:
    """The version the write is conditioned on: the one expected, or, when several are, the
    current one (read first, `StaleVersion` unless it is among them)."""
    if single is not None or expected is None or isinstance(expected, int):
        return single
    current = await repository.version_of(connection, tutorial_id)
    if current is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    if current not in expected:
        raise _stale(tutorial_id, current, expected)
    return current


async def _unchanged(
    connection: Connection, tutorial_id: int, version: int | None
) -> TutorialRecord:
    current = await repository.get(connection, tutorial_id)
    if current is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    if version is not None and current.version != version:
        raise _stale(tutorial_id, current.version, {version})
    return current


async def _missing_or_stale(connection: Connection, tutorial_id: int, version: int | None) -> None:
    current = await repository.version_of(connection, tutorial_id)
    if current is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    raise _stale(tutorial_id, current, {version} if version is not None else set())


def _stale(tutorial_id: int, current: int, expected: Set[int]) -> StaleVersion:
    wanted = ", ".join(str(version) for version in sorted(expected))
    return StaleVersion(f"tutorial {tutorial_id} is at version {current}, not {wanted}", current)


# --- Restore --------------------------------------------------------------------------------

#: The statement (and lock) timeout of a restore, in seconds: a whole backup is one transaction.
RESTORE_TIMEOUT = 3600.0
#: Valid rows staged at a time (one binary COPY each).
_RESTORE_BATCH = 10_000
#: Bad rows a refused restore names (all of them are counted).
_RESTORE_SHOWN = 5
_BACKUP_FIELDS = frozenset(
    ("tutorial_id", "name", "url", "description", "tags", "created_at", "updated_at", "version")
)


async def restore(
    database: Database,
    rows: AsyncIterable[SourceRow | RowError],
    *,
    statement_timeout: float = RESTORE_TIMEOUT,
) -> int:
    """Restore a backup (its rows as `transfer.readers.read_ndjson` gives them) into an empty
    catalog; the number of tutorials restored.

    One transaction: the table is locked against writers, found empty, every row validated
    (the same rules as every face, plus ids, versions and timezone-aware timestamps) and
    staged, checked for two rows with one id or url, then inserted as it was, and the id
    sequence moved past the highest id. Any bad row refuses the whole backup (`InvalidInput`
    naming the first few by line); a catalog that is not empty is refused (`Conflict`).
    Nothing is written either way.
    """
    from tutorials.errors import Conflict
    from tutorials.transfer import sql

    timeout_ms = max(1, int(statement_timeout * 1000))
    runs = 0

    async def work(connection: Connection) -> int:
        nonlocal runs
        runs += 1
        if runs > 1:  # a retry would read an input already consumed
            raise Unavailable("the restore met a conflicting write; run it again")
        stored = await sql.begin_restore(connection, timeout_ms)
        if stored:
            raise Conflict(
                f"the catalog is not empty ({stored:,} tutorial{'s' if stored != 1 else ''}): a "
                "backup is restored into an empty catalog only (export a backup of this one, "
                "then `tutorials delete --all`)"
            )
        errors: list[tuple[int, str]] = []
        batch: list[RestoreRecord] = []
        async for record in _backup_records(rows, errors):
            batch.append(record)
            if len(batch) >= _RESTORE_BATCH:
                await sql.stage_restore(connection, batch, statement_timeout)
                batch = []
        if batch:
            await sql.stage_restore(connection, batch, statement_timeout)
        if errors:
            shown = "; ".join(f"line {line}: {reason}" for line, reason in errors[:_RESTORE_SHOWN])
            more = len(errors) - _RESTORE_SHOWN
            raise InvalidInput(
                f"the backup cannot be restored, nothing was written: {shown}"
                + (f"; and {more:,} more" if more > 0 else ""),
                [FieldError(("line", line), reason) for line, reason in errors[:100]],
            )
        duplicate = await sql.restore_duplicate(connection)
        if duplicate is not None:
            column, value, first, second = duplicate
            raise InvalidInput(
                f"the backup cannot be restored, nothing was written: lines {first} and "
                f"{second} both have {column} {value}"
            )
        return await sql.finish_restore(connection, statement_timeout)

    # The client waits for the whole restore (which reads its input as it goes) as long as
    # its statements may run, and a second more.
    return await database.transaction(work, statement_timeout=statement_timeout)


async def _backup_records(
    rows: AsyncIterable[SourceRow | RowError], errors: list[tuple[int, str]]
) -> AsyncIterable[RestoreRecord]:
    """The valid rows of a backup, after its header; every bad one appended to `errors`."""
    from tutorials.transfer.readers import RowError

    header_seen = False
    async for row in rows:
        if isinstance(row, RowError):
            errors.append((row.line, row.reason))
            if row.fatal:
                return
            continue
        if not header_seen:
            header_seen = True
            if row.data != {"tutorials_backup": 1}:
                raise InvalidInput(
                    f"line {row.line}: not a backup: a backup starts with the line "
                    '{"tutorials_backup":1} (`tutorials export FILE --format backup` writes one)'
                )
            continue
        try:
            yield _backup_record(row.line, row.data)
        except ValueError as exc:
            errors.append((row.line, str(exc)))
    if not header_seen:
        raise InvalidInput("not a backup: the file is empty")


def _backup_record(line: int, data: object) -> RestoreRecord:
    """One backup row as a staging record; `ValueError` saying what is wrong with it."""
    if not isinstance(data, dict) or set(data) != _BACKUP_FIELDS:
        given = ", ".join(sorted(map(str, data))) if isinstance(data, dict) else "not an object"
        raise ValueError(
            f"a backup row has the fields {', '.join(sorted(_BACKUP_FIELDS))} ({given})"
        )
    tutorial_id = _whole(data["tutorial_id"], "tutorial_id", MAX_ID)
    version = _whole(data["version"], "version", VERSION_MAX)
    created_at = _timestamp(data["created_at"], "created_at")
    updated_at = _timestamp(data["updated_at"], "updated_at")
    fields = {key: data[key] for key in ("name", "url", "description", "tags")}
    try:
        model = TutorialCreate.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(invalid_input(exc).detail.removeprefix("invalid input: ")) from None
    return (
        line,
        tutorial_id,
        model.name,
        model.url,
        model.description,
        model.tags,
        created_at,
        updated_at,
        version,
    )


def _whole(value: object, name: str, highest: int) -> int:
    if type(value) is not int or not 1 <= value <= highest:
        raise ValueError(f"{name}: must be a whole number from 1 to {highest}")
    return value


def _timestamp(value: object, name: str) -> datetime:
    """An ISO 8601 timestamp with its offset (what a backup holds)."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.utcoffset() is None:
        raise ValueError(f"{name}: must be an ISO 8601 timestamp with an offset")
    return parsed


# --- Reads ----------------------------------------------------------------------------------


async def find(database: Database, tutorial_id: int) -> TutorialRecord | None:
    """The tutorial with this id, or None."""
    check_id(tutorial_id)
    return await database.read(lambda connection: repository.get(connection, tutorial_id))


async def get(database: Database, tutorial_id: int) -> TutorialRecord:
    """The tutorial with this id; `NotFound` when there is none."""
    found = await find(database, tutorial_id)
    if found is None:
        raise NotFound(f"tutorial {tutorial_id} not found")
    return found


#: The orders a listing can take (`list_page`), the first the default: id order, oldest
#: first; newest first; by name (case-insensitive, the first 64 characters, then id); most
#: recently updated first.
ORDERS = ("oldest", "newest", "name", "updated")
#: The fingerprint kind of each order's cursors (`i` is the id order's, as it always was).
_ORDER_KINDS = {"oldest": "i", "newest": "d", "name": "n", "updated": "u"}


def check_order(order: str) -> str:
    """One of `ORDERS`; `InvalidInput` naming `sort` otherwise."""
    if order not in _ORDER_KINDS:
        message = f"must be one of {', '.join(ORDERS)}"
        raise InvalidInput(f"invalid input: sort: {message}", [FieldError(("sort",), message)])
    return order


async def list_page(
    database: Database,
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
    order: str = "oldest",
) -> Page:
    """One keyset page, in `order` (`ORDERS`; oldest first by default), of the tutorials
    carrying every tag."""
    limit, tags = check_limit(limit), check_tags(tags) if tags else []
    if check_order(order) != "oldest":
        return await _ordered_page(database, order, limit, cursor, tags)
    fingerprint = _fingerprint("i", None, tags)
    after_id = 0
    if cursor:
        after_id = _id_cursor(cursor, fingerprint)
    rows = await database.read(
        lambda connection: repository.page(
            connection, after_id=after_id, limit=limit + 1, tags=tags
        )
    )
    items = rows[:limit]
    if len(rows) > limit:
        return Page(items, _id_cursor_after(fingerprint, items[-1].tutorial_id))
    return Page(items, None)


async def _ordered_page(
    database: Database, order: str, limit: int, cursor: str | None, tags: list[str]
) -> Page:
    """`list_page` in an order other than id's (see `repository.ordered_page`)."""
    fingerprint = _fingerprint(_ORDER_KINDS[order], None, tags)
    after = _order_cursor(cursor, fingerprint, order) if cursor else None
    rows = await database.read(
        lambda connection: repository.ordered_page(
            connection, order=order, limit=limit + 1, tags=tags, after=after
        )
    )
    items = [record for record, _key in rows[:limit]]
    if len(rows) > limit:
        last, key = rows[limit - 1]
        return Page(items, _order_cursor_after(fingerprint, order, key, last.tutorial_id))
    return Page(items, None)


async def search(
    database: Database,
    query: str,
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    tags: Sequence[str] = (),
    prefix: bool = False,
) -> Page:
    """One page of ranked full-text search results (web search syntax: words, "phrases",
    -excluded, or), best match first; bounded by the settings' `search_candidates`. With
    `prefix`, the last word is the beginning of a word (`prefix_terms`)."""
    query, limit = check_query(query), check_limit(limit)
    tags = check_tags(tags) if tags else []
    candidates = database.settings.search_candidates
    text, alternatives = prefix_terms(query) if prefix else (query, None)
    fingerprint = _fingerprint("p" if alternatives is not None else "r", query, tags)
    after: tuple[float, int] | None = None
    if cursor:
        after = _rank_cursor(cursor, fingerprint)

    async def work(connection: Connection) -> list[tuple[TutorialRecord, float]]:
        return await repository.search(
            connection,
            text,
            limit=limit + 1,
            tags=tags,
            after=after,
            candidates=candidates,
            plan=False,  # the transaction begins with it
            prefix=alternatives,
        )

    if candidates:  # planned for its words: see repository.CUSTOM_PLAN
        run = database.transaction(work, readonly=True, local=repository.PLAN_SETTINGS)
    else:
        run = database.read(work)
    found = await _searching(run)
    items = [record for record, _rank in found[:limit]]
    if len(found) > limit:
        last, rank = found[limit - 1]
        return Page(items, _rank_cursor_after(fingerprint, rank, last.tutorial_id))
    return Page(items, None)


async def _searching(run: Awaitable[T]) -> T:
    """Await a unit of work that runs a full-text query: one the parser refused is
    `InvalidInput` naming `q` (`refused_query`)."""
    try:
        return await run
    except Exception as exc:
        refused = refused_query(exc)
        if refused is not None:
            raise refused from None
        raise


def refused_query(error: BaseException) -> InvalidInput | None:
    """`InvalidInput` naming `q` when the full-text parser refused the search (a query can be
    valid text yet too much for it); None for any other failure. Search and export share it."""
    if sqlstate_of(error) not in _QUERY_REFUSED:
        return None
    message = "the search has too many operators in a row or is nested too deeply"
    return InvalidInput(f"invalid input: q: {message}", [FieldError(("q",), message)])


async def count(database: Database) -> int:
    return await database.read(repository.count)


@dataclass(frozen=True, slots=True)
class Found:
    """How many tutorials a listing or a search holds; `exact` is False when a search matched
    more than it ranks (`search_candidates`): `count` is then that bound."""

    count: int
    exact: bool


async def count_found(
    database: Database,
    *,
    tags: Sequence[str] = (),
    query: str | None = None,
    prefix: bool = False,
) -> Found:
    """How many tutorials `list_page` (no query) or `search` would page through for these
    tags and query: exact for a listing; for a search, at most the `search_candidates` it
    ranks (counted up to one more, to know whether there are more)."""
    tags = check_tags(tags) if tags else []
    if query is None:
        total = await database.read(
            lambda connection: repository.count_found(connection, tags=tags)
        )
        return Found(total, True)
    query = check_query(query)
    text, alternatives = prefix_terms(query) if prefix else (query, None)
    candidates = database.settings.search_candidates

    async def work(connection: Connection) -> int:
        return await repository.count_found(
            connection,
            tags=tags,
            query=text,
            prefix=alternatives,
            bound=candidates + 1 if candidates else 0,
        )

    found = await _searching(database.read(work))
    if candidates and found > candidates:
        return Found(candidates, False)
    return Found(found, True)


#: Tags `tag_counts` lists by default, and at most.
TAGS_LISTED = 50
TAGS_LISTED_MAX = 500


async def tag_counts(database: Database, *, limit: int = TAGS_LISTED) -> list[tuple[str, int]]:
    """The `limit` most used tags and how many tutorials carry each, most used first (ties
    by tag). One scan of the tags: fine for a catalog's page, not for a hot path."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= TAGS_LISTED_MAX:
        message = f"must be a whole number from 1 to {TAGS_LISTED_MAX}"
        raise InvalidInput(f"invalid input: limit: {message}", [FieldError(("limit",), message)])
    return await database.read(lambda connection: repository.tag_counts(connection, limit=limit))


# --- Search as you type -----------------------------------------------------------------------

#: A last word that can be a prefix: not negated (`-word`), not the `or` operator, no quote.
_LAST_WORD = re.compile(r'(?:^|\s)([^\s"-][^\s"]*)$')
#: Prefixes shorter than this are used as typed only (no shortened alternatives).
_SHORTEN_FROM = 5


def prefix_terms(query: str) -> tuple[str, str | None]:
    """Split a (checked) query for search as you type: the text before its last word, for
    `websearch_to_tsquery`, and `to_tsquery` alternatives of the last word as a prefix; or
    `(query, None)` when the last word cannot be a prefix (inside an open "phrase", negated,
    the `or` operator, or punctuation only).

    The document holds stemmed words (`sqlalchemi`, `tutori`), and a word cut short does not
    always stem to a prefix of its stem ("tutoria" stays `tutoria`, not a prefix of `tutori`):
    so the alternatives are the word and, from five characters on, the word less its last one
    or two characters, each read stemmed and as typed (`repository.query_source`). A prefix
    therefore finds a little more than the whole word would, never less.
    """
    if query.count('"') % 2:
        return query, None
    found = _LAST_WORD.search(query)
    if found is None or found.group(1).lower() == "or":
        return query, None
    word = found.group(1)
    if not any(char.isalnum() for char in word):
        return query, None
    cuts = [word]
    if len(word) >= _SHORTEN_FROM:
        cuts += [word[:-1], word[:-2]]
    quoted = (cut.replace("\\", "\\\\").replace("'", "''") for cut in cuts)
    alternatives = " | ".join(f"'{cut}':*" for cut in quoted)
    return query[: found.start(1)].strip(), alternatives


# --- Values from outside ----------------------------------------------------------------------


def new_tutorial(fields: Mapping[str, object]) -> TutorialCreate:
    """A `TutorialCreate` from loose fields (a CLI's options, a library caller's object).

    Plain input takes `schemas.fast_fields` (the model's own rules, without pydantic's cost:
    a third of a library insert); anything else, and every refusal, the model itself.
    """
    data = dict(fields)
    fast = fast_fields(data)
    if fast is not None:
        name, url, description, tags = fast
        return TutorialCreate.model_construct(
            set(data), name=name, url=url, description=description, tags=tags
        )
    try:
        return TutorialCreate.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc) from None


def patch_of(fields: Mapping[str, object]) -> TutorialPatch:
    """A `TutorialPatch` from the fields a caller sent (absent = unchanged, None = clear)."""
    try:
        return TutorialPatch.model_validate(dict(fields))
    except ValidationError as exc:
        raise invalid_input(exc) from None


# --- Cursors ----------------------------------------------------------------------------------
#
# A cursor is the listing's fingerprint and where its last page ended, joined by `_`: `i<hex>_42`
# for a listing (the last id), `r<hex>_<rank>_42` for a search (the last rank, as the 16 hex
# digits of its IEEE 754 double, exact and never NaN or infinite once checked, then the last id).
# URL-safe as it is, opaque to clients, and parsed with two splits and an `int()`: a page's
# cursor work is well under a microsecond.

_FINGERPRINT_JSON = json.JSONEncoder(ensure_ascii=False)
_CURSOR_MESSAGE = "must be a next_cursor this listing returned (start again without one)"
_RANK = struct.Struct(">d")


def _fingerprint(kind: str, query: str | None, tags: Sequence[str]) -> str:
    """What a cursor is tied to: its kind of listing, its query and its tags."""
    return _fingerprint_of(kind, query, tuple(sorted(tags)))


@functools.lru_cache(maxsize=1024)
def _fingerprint_of(kind: str, query: str | None, tags: tuple[str, ...]) -> str:
    """`_fingerprint`, remembered: the same few listings are paged through again and again."""
    key = _FINGERPRINT_JSON.encode([kind, query, list(tags)]).encode()
    return kind + hashlib.blake2b(key, digest_size=6).hexdigest()


def _id_cursor_after(fingerprint: str, last_id: int) -> str:
    return f"{fingerprint}_{last_id}"


def _rank_cursor_after(fingerprint: str, rank: float, last_id: int) -> str:
    return f"{fingerprint}_{_RANK.pack(rank).hex()}_{last_id}"


def _bad_cursor() -> InvalidInput:
    return InvalidInput(
        f"invalid input: cursor: {_CURSOR_MESSAGE}", [FieldError(("cursor",), _CURSOR_MESSAGE)]
    )


def _cursor_id(value: str) -> int:
    if not (value.isdigit() and value.isascii() and len(value) <= 19):
        raise _bad_cursor()
    number = int(value)
    if number > MAX_ID:
        raise _bad_cursor()
    return number


def _id_cursor(cursor: str, fingerprint: str) -> int:
    """The last id of the page a listing cursor follows; `InvalidInput` for anything else."""
    found, _, last_id = cursor.partition("_")
    if found != fingerprint:
        raise _bad_cursor()
    return _cursor_id(last_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MICROS = re.compile(r"-?[0-9]{1,18}")


def _order_cursor_after(fingerprint: str, order: str, key: Any, last_id: int) -> str:
    """`d<hex>_<id>` (newest), `u<hex>_<microseconds since 1970>_<id>` (updated),
    `n<hex>_<id>_<the name key, UTF-8 in unpadded base64url>` (name)."""
    if order == "newest":
        return f"{fingerprint}_{last_id}"
    if order == "updated":
        return f"{fingerprint}_{(key - _EPOCH) // _MICROSECOND}_{last_id}"
    encoded = base64.urlsafe_b64encode(str(key).encode()).decode().rstrip("=")
    return f"{fingerprint}_{last_id}_{encoded}"


def _order_cursor(cursor: str, fingerprint: str, order: str) -> tuple[Any, ...]:
    """Where the page an order's cursor follows ended: `(id,)` or `(key, id)`."""
    if order == "newest":
        return (_id_cursor(cursor, fingerprint),)
    parts = cursor.split("_", 2)
    if len(parts) != 3 or parts[0] != fingerprint:
        raise _bad_cursor()
    if order == "updated":
        if not _MICROS.fullmatch(parts[1]):
            raise _bad_cursor()
        try:
            stamp = _EPOCH + int(parts[1]) * _MICROSECOND
        except OverflowError:
            raise _bad_cursor() from None
        return stamp, _cursor_id(parts[2])
    encoded = parts[2]
    try:
        key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, ValueError):
        raise _bad_cursor() from None
    if len(key) > repository.NAME_KEY_CHARS or "\x00" in key:
        raise _bad_cursor()
    return key, _cursor_id(parts[1])


def _rank_cursor(cursor: str, fingerprint: str) -> tuple[float, int]:
    """The (rank, id) of the last result of the page a search cursor follows."""
    parts = cursor.split("_")
    if len(parts) != 3 or parts[0] != fingerprint or len(parts[1]) != 16:
        raise _bad_cursor()
    try:
        (rank,) = _RANK.unpack(bytes.fromhex(parts[1]))
    except ValueError:
        raise _bad_cursor() from None
    if not math.isfinite(rank):
        raise _bad_cursor()
    return rank, _cursor_id(parts[2])
