"""Every SQL statement of bulk transfer, and the calls that run them on asyncpg.

Import, per batch, in the caller's transaction (one unit of work):

1. `CREATE TEMP TABLE tutorials_import ... ON COMMIT DROP` (per transaction, so it works
   behind PgBouncer in transaction mode too) and COPY rows into it with asyncpg's binary
   `copy_records_to_table` (~1.6 µs a row on the server).
2. Rows without a url: under a transaction-level advisory lock (so two imports cannot both add
   the same url-less row), delete from the staging table those identical (same name,
   description and tags) to a url-less row already stored: found through `UrllessKeys` (a
   content hash per stored url-less row, kept by the run) and confirmed by primary key.
3. The fast path, while urls keep being new (a first import): one binary COPY of the new rows
   straight into `tutorials`, PostgreSQL's bulk insert path, as `psql \\copy` does. A url
   already there fails it (unique violation) and the batch is run again on the safe path:
4. the whole batch staged, rows equal to what is stored dropped, then the stored tutorials with
   a staged url updated with the fields each row gives (`UPDATE ... FROM`: a field the input
   did not give keeps its stored value), and the rest inserted in input order with
   `ON CONFLICT (url) DO NOTHING`; a url another import added in between goes round again.
   Both paths keep the input's order, so ids follow the file.

Concurrent imports: ON CONFLICT settles races on url; two batches updating the same urls in
different orders can deadlock, which PostgreSQL detects and the unit of work retries (40P01).

Export runs `COPY (SELECT ...) TO STDOUT` in a REPEATABLE READ, READ ONLY transaction: CSV as
PostgreSQL writes it (tags joined by `;`), NDJSON as JSON text built by the server, passed
through COPY's CSV mode with a quote and delimiter that JSON text never contains (PostgreSQL
escapes control characters in JSON), so each line arrives exactly as the server made it, at COPY
speed, with no per-row work in Python. A big export may run as several COPYs over id ranges, on
as many connections, each importing the first one's snapshot (`pg_export_snapshot`, as
`pg_dump --jobs` does): one consistent table, the server's work spread over its cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg

from tutorials.db.database import Connection
from tutorials.repository import FIELDS

OnConflict = Literal["update", "skip", "error"]
ExportFormat = Literal["csv", "ndjson", "json", "backup"]

#: An import's batch is one row of this: (line, name, url, description, tags, has_description,
#: has_tags). The flags say whether the input gave that field at all: a field it did not give
#: leaves a stored tutorial's value alone; one it gave empty clears it.
Record = tuple[int, str, str | None, str | None, list[str], bool, bool]

STAGING = "tutorials_import"
STAGING_COLUMNS = ("line", "name", "url", "description", "tags", "has_description", "has_tags")
#: The columns a new tutorial gets from a record (a field not given is NULL / no tags).
INSERTED_COLUMNS = ("name", "url", "description", "tags")

#: Held (per transaction) while url-less rows are matched and inserted: the bytes of "tutimprt".
URLLESS_LOCK_KEY = 0x747574696D707274

_CREATE_STAGING = f"""
CREATE TEMP TABLE {STAGING} (
    line bigint NOT NULL,
    name text NOT NULL,
    url text,
    description text,
    tags text[] NOT NULL,
    has_description boolean NOT NULL,
    has_tags boolean NOT NULL
) ON COMMIT DROP
"""

#: This transaction's deadlines (`SET LOCAL`, so PgBouncer-safe): a batch, or a whole export,
#: may outlast the per-request defaults, and imports of the same urls wait on each other's locks.
_TIMEOUTS = "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)"

_LOCK_URLLESS = "SELECT pg_advisory_xact_lock($1)"


def _content_key(alias: str) -> str:
    """A 64-bit hash of a url-less row's content (name, description, tags), computed by
    PostgreSQL for stored and staged rows alike. `\\x1e` separates the fields; a missing
    description and an empty one differ; tags cannot hold control characters."""
    return (
        f"hashtextextended({alias}.name || E'\\x1e' || "
        f"coalesce(E'\\x1f' || {alias}.description, '') || E'\\x1e' || "
        f"array_to_string({alias}.tags, E'\\x1f'), 0)"
    )


# Integers only, formatted in: a custom plan per watermark (0: the url index; else the pkey).
_STORED_KEYS = (
    "SELECT t.tutorial_id, " + _content_key("t") + " FROM tutorials AS t "
    "WHERE t.url IS NULL AND t.tutorial_id > {watermark}"
)

_STAGED_KEYS = f"SELECT i.line, {_content_key('i')} FROM {STAGING} AS i WHERE i.url IS NULL"

_MATCH_URLLESS = f"""
DELETE FROM {STAGING} AS i
USING tutorials AS t, unnest($1::bigint[], $2::bigint[]) AS candidate(line, tutorial_id)
WHERE i.line = candidate.line
  AND t.tutorial_id = candidate.tutorial_id
  AND t.url IS NULL
  AND t.name = i.name
  AND t.tags = i.tags
  AND t.description IS NOT DISTINCT FROM i.description
RETURNING i.line
"""

#: Rows equal to what is stored (in the fields they give), dropped before the update: updating
#: them would lock each row and write it again for nothing; this join through the url index
#: only reads.
_DROP_UNCHANGED = f"""
DELETE FROM {STAGING} AS i
USING tutorials AS t
WHERE i.url IS NOT NULL
  AND t.url = i.url
  AND t.name = i.name
  AND (NOT i.has_tags OR t.tags = i.tags)
  AND (NOT i.has_description OR t.description IS NOT DISTINCT FROM i.description)
"""

#: Stored tutorials with a staged url take the fields the row gives (the others stay as they
#: are), one new version each; the staged rows written are removed, leaving the new ones.
_UPDATE_EXISTING = f"""
WITH updated AS (
    UPDATE tutorials AS t
    SET name = i.name,
        description = CASE WHEN i.has_description THEN i.description ELSE t.description END,
        tags = CASE WHEN i.has_tags THEN i.tags ELSE t.tags END,
        version = t.version + 1,
        updated_at = now()
    FROM {STAGING} AS i
    WHERE i.url IS NOT NULL AND t.url = i.url
    RETURNING i.line
)
DELETE FROM {STAGING} AS i USING updated WHERE i.line = updated.line
"""

_INSERT = f"""
INSERT INTO tutorials AS t (name, url, description, tags)
SELECT name, url, description, tags FROM {STAGING} ORDER BY line
"""

_DELETE_STAGED = f"DELETE FROM {STAGING} AS i WHERE i.line <> ALL($1::bigint[])"

_UPSERT_SKIP = f"""
WITH written AS (
    {_INSERT}
    ON CONFLICT (url) DO NOTHING
    RETURNING 1
)
SELECT count(*) AS inserted, 0::bigint AS updated FROM written
"""

#: The staged rows go in, except those whose url is already stored: their lines come back
#: (under "error" they are rejected; under "update", another import added those urls since the
#: update above, and they go round again).
_INSERT_NEW = f"""
WITH written AS (
    {_INSERT}
    ON CONFLICT (url) DO NOTHING
    RETURNING url
)
SELECT i.line
FROM {STAGING} AS i
WHERE i.url IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM written AS w WHERE w.url = i.url)
ORDER BY i.line
"""


@dataclass(frozen=True)
class BatchOutcome:
    """What the database did with one batch."""

    inserted: int
    updated: int
    #: Lines of url-less rows identical to a stored one (nothing to do; rejected under "error").
    matched: list[int]
    #: Lines whose url was already stored, under on_conflict="error" (nothing written).
    conflicts: list[int]


@dataclass
class UrllessKeys:
    """The content keys of the stored url-less rows, kept by one import run.

    Matching a url-less row against every stored url-less row by a join would scan them all
    for every batch (no index holds their content), which makes a big url-less import
    quadratic. Instead the run reads each stored url-less row's key once — all of them at its
    first url-less batch, then only rows newer than `watermark` — and a batch's rows are looked
    up here; only the candidates found are checked for real, by primary key, so a hash
    collision or a row changed meanwhile is never taken for a match.

    Refreshes happen under the url-less advisory lock, which every import holds while it adds
    url-less rows, so rows added by other imports are always seen. A url-less row added by
    another writer (the API) with an id below the watermark but committed after the refresh
    is not: an identical row in the import would then be added again. Memory: about 100 bytes
    per stored url-less row (none at all for rows with urls).
    """

    ids: dict[int, int] = field(default_factory=dict)
    watermark: int = 0


async def _refresh(connection: Connection, keys: UrllessKeys) -> None:
    query = _STORED_KEYS.format(watermark=int(keys.watermark))
    highest = keys.watermark
    ids = keys.ids
    async for tutorial_id, key in connection.cursor(query, prefetch=10_000):
        ids[key] = tutorial_id
        highest = max(highest, tutorial_id)
    keys.watermark = highest


async def _match_urlless(connection: Connection, keys: UrllessKeys) -> list[int]:
    """Delete from the staging table the url-less rows identical to stored ones; their lines."""
    await connection.fetchval(_LOCK_URLLESS, URLLESS_LOCK_KEY)
    await _refresh(connection, keys)
    ids = keys.ids
    lines: list[int] = []
    candidates: list[int] = []
    for line, key in await connection.fetch(_STAGED_KEYS):
        found = ids.get(key)
        if found is not None:
            lines.append(line)
            candidates.append(found)
    if not lines:
        return []
    return sorted(row[0] for row in await connection.fetch(_MATCH_URLLESS, lines, candidates))


async def set_timeouts(connection: Connection, timeout_ms: int) -> None:
    """This transaction's statement and lock timeouts (see `_TIMEOUTS`)."""
    await connection.execute(_TIMEOUTS, str(timeout_ms))


async def write_batch(
    connection: Connection,
    records: Sequence[Record],
    *,
    on_conflict: OnConflict,
    direct: bool,
    keys: UrllessKeys,
) -> BatchOutcome:
    """Merge `records` (sorted by line) into `tutorials`, in the current transaction.

    `records` hold no two rows with the same url, nor two identical url-less rows (the caller
    dedupes a batch), so ON CONFLICT never meets the same key twice in one statement.

    `direct`: the caller expects every url to be new, so the rows go straight into `tutorials`
    with one binary COPY (PostgreSQL's own bulk path, what `psql \\copy` does), after url-less
    rows were matched. A url already stored makes that COPY fail with a unique violation (23505)
    and the transaction roll back: the caller runs the batch again without `direct`, through the
    staging table and ON CONFLICT.
    """
    urlless = [record for record in records if record[2] is None]
    staged = records if not direct else urlless
    if staged:
        await connection.execute(_CREATE_STAGING)
        await connection.copy_records_to_table(STAGING, records=staged, columns=STAGING_COLUMNS)
    matched = await _match_urlless(connection, keys) if urlless else []
    if direct:
        known = set(matched)
        fresh = [
            record[1:5] for record in records if record[2] is not None or record[0] not in known
        ]
        if fresh:
            await connection.copy_records_to_table(
                "tutorials", records=fresh, columns=INSERTED_COLUMNS
            )
        return BatchOutcome(len(fresh), 0, matched, [])
    if on_conflict == "error":
        conflicts = [row[0] for row in await connection.fetch(_INSERT_NEW)]
        inserted = len(records) - len(matched) - len(conflicts)
        return BatchOutcome(inserted, 0, matched, conflicts)
    if on_conflict == "skip":
        row = await connection.fetchrow(_UPSERT_SKIP)
        assert row is not None
        return BatchOutcome(int(row["inserted"]), 0, matched, [])
    await connection.execute(_DROP_UNCHANGED)
    inserted = updated = 0
    for _ in range(_UPSERT_ROUNDS):
        updated += _count(await connection.execute(_UPDATE_EXISTING))
        remaining = await connection.fetchval(f"SELECT count(*) FROM {STAGING}")
        raced = [row[0] for row in await connection.fetch(_INSERT_NEW)]
        inserted += remaining - len(raced)
        if not raced:
            break
        # Another import inserted these urls meanwhile: update them like the others.
        await connection.execute(_DELETE_STAGED, raced)
        await connection.execute(_DROP_UNCHANGED)
    return BatchOutcome(inserted, updated, matched, [])


#: How many times a batch goes round update-then-insert when other imports keep adding its urls.
_UPSERT_ROUNDS = 5


def _count(status: str) -> int:
    """The row count of a command status (`DELETE 12`)."""
    return int(status.rsplit(" ", 1)[-1])


# -- export ------------------------------------------------------------------------------------

#: What `pg_export_snapshot()` returns (e.g. `00000003-0000001B-1`): checked before it is
#: formatted into SET TRANSACTION SNAPSHOT, which takes no parameters.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+(?:-[0-9A-F]+)+")

_FILTERED = " FROM tutorials{where} ORDER BY tutorial_id"

#: The first characters that make a spreadsheet read a cell as a formula (OWASP, "CSV
#: injection"): `=`, `+`, `-`, `@`, tab and carriage return.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The same as code points (`ascii()` of a cell: an integer test, no string made per row; 39
#: is `'`) and as a regex bracket expression.
_FORMULA_CODES = tuple(ord(char) for char in FORMULA_STARTS)
_FORMULA_CLASS = r"[=+@\t\r-]"


def _neutralised(value: str, start: str | None = None) -> str:
    """`value`, safe in a spreadsheet: a `'` put before a cell that starts with a formula
    character, or with `'`s followed by one (so that import can undo exactly this, see
    `readers.restore_cell`). `start`: an expression the cell starts with, cheaper to test
    (the first tag, for the tags cell).

    Written for the COPY's speed: most cells start with a letter, above every formula code,
    and are settled by one `ascii()` and one comparison; the regex runs only on cells that
    start with `'`. It is not free: on 500,000 rows the server executes the SELECT in 0.28 s
    against 0.14 s without it (about 0.3 µs a row; `left(...) IN (...)` took 0.52 s), while
    the whole COPY to the client takes 0.5-0.8 s (benchmarks/csv_neutralise.py).
    """
    start = start or value
    first = f"ascii({start})"
    codes = ", ".join(str(code) for code in _FORMULA_CODES)
    quoted = f"({first} = 39 AND {start} ~ E'^''+{_FORMULA_CLASS}')"
    return (
        f"CASE WHEN {first} > {max(_FORMULA_CODES)} THEN {value} "
        f"WHEN {first} IN ({codes}) OR {quoted} THEN '''' || {value} ELSE {value} END"
    )


_TAGS_CELL = "array_to_string(tags, ';')"
#: CSV exactly as stored (`raw_csv`), and neutralised for spreadsheets (the default).
_EXPORT_CSV_RAW = "SELECT name, url, description, array_to_string(tags, ';') AS tags" + _FILTERED
_EXPORT_CSV = (
    f"SELECT {_neutralised('name')} AS name, "
    "url, "  # a url starts with its scheme (validation): never a formula
    f"{_neutralised('description')} AS description, "
    f"{_neutralised(_TAGS_CELL, 'tags[1]')} AS tags" + _FILTERED
)

# Compact JSON, built by concatenation: ~20 % cheaper for the server than json_build_object.
_EXPORT_NDJSON = (
    "SELECT '{\"name\":' || to_json(name) "
    "|| ',\"url\":' || coalesce(to_json(url)::text, 'null') "
    "|| ',\"description\":' || coalesce(to_json(description)::text, 'null') "
    "|| ',\"tags\":' || to_json(tags) || '}'" + _FILTERED
)

#: A backup: every column a restore needs to give the table back as it was (ids, timestamps in
#: UTC, versions), one JSON object per line, after `BACKUP_HEADER`. Timestamps are written by
#: PostgreSQL (`to_json`, microseconds, an offset), so they read back exactly.
_EXPORT_BACKUP = (
    "SELECT '{\"tutorial_id\":' || tutorial_id "
    "|| ',\"name\":' || to_json(name) "
    "|| ',\"url\":' || coalesce(to_json(url)::text, 'null') "
    "|| ',\"description\":' || coalesce(to_json(description)::text, 'null') "
    "|| ',\"tags\":' || to_json(tags) "
    "|| ',\"created_at\":' || to_json(created_at) "
    "|| ',\"updated_at\":' || to_json(updated_at) "
    "|| ',\"version\":' || version || '}'" + _FILTERED
)
#: The first line of a backup: what it is, and the version of its layout.
BACKUP_HEADER = b'{"tutorials_backup":1}\n'

# CSV as PostgreSQL writes it; NDJSON passes through CSV mode with a quote and delimiter that
# JSON text cannot contain, so every line goes out unquoted, exactly as the server made it.
_COPY_OPTIONS: dict[str, dict[str, object]] = {
    "csv": {"format": "csv"},
    "ndjson": {"format": "csv", "quote": "\x01", "delimiter": "\x02"},
}

_ID_RANGE = "SELECT min(tutorial_id), max(tutorial_id) FROM tutorials"

#: An id range `(after, upto)`: rows with after < tutorial_id <= upto; None is unbounded.
IdRange = tuple[int | None, int | None]
WHOLE: IdRange = (None, None)


async def prepare_export(
    connection: Connection, timeout_ms: int, *, snapshot: str | None = None
) -> None:
    """Ready this REPEATABLE READ, READ ONLY transaction (`Database.stream`) for an export.

    Every statement of the export then sees one snapshot; with `snapshot` (from
    `export_snapshot` in another transaction, still open) it is that transaction's, so that
    several streams export one consistent table. SET TRANSACTION SNAPSHOT must come before any
    query, the timeouts' included.
    """
    if snapshot is not None:
        if not _SNAPSHOT_ID.fullmatch(snapshot):
            raise ValueError(f"not a snapshot id: {snapshot!r}")
        await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    await set_timeouts(connection, timeout_ms)
    await connection.execute(_UTC)  # a backup's timestamps, whatever the server's time zone


_UTC = "SELECT set_config('TimeZone', 'UTC', true)"


async def export_snapshot(connection: Connection) -> str:
    """This transaction's snapshot, for other transactions to share while it stays open."""
    snapshot = await connection.fetchval("SELECT pg_export_snapshot()")
    return str(snapshot)


async def split_ids(connection: Connection, parts: int, min_rows: int) -> list[IdRange]:
    """The table cut into `parts` id ranges of equal width (fewer when it is small).

    The ends come from the primary key (two index probes); ids are an identity, so equal
    widths hold about equal numbers of rows. The first range starts and the last ends
    unbounded, so together they cover every row whatever the ids.
    """
    row = await connection.fetchrow(_ID_RANGE)
    if row is None or row[0] is None or parts <= 1:
        return [WHOLE]
    low, high = int(row[0]), int(row[1])
    span = high - low + 1
    parts = max(1, min(parts, span // max(1, min_rows)))
    if parts == 1:
        return [WHOLE]
    cuts = [low - 1 + span * k // parts for k in range(1, parts)]
    bounds: list[int | None] = [None, *cuts, None]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def _where(
    tags: Sequence[str], query: str | None, ids: IdRange = WHOLE
) -> tuple[str, list[object]]:
    conditions: list[str] = []
    args: list[object] = []
    after, upto = ids
    # integers only, formatted in (a COPY's parameters are inlined as text by asyncpg anyway)
    if after is not None:
        conditions.append(f"tutorial_id > {int(after)}")
    if upto is not None:
        conditions.append(f"tutorial_id <= {int(upto)}")
    if tags:
        args.append(list(tags))
        conditions.append(f"tags @> ${len(args)}::text[]")
    if query is not None:
        args.append(query)
        conditions.append(f"search @@ websearch_to_tsquery('english', ${len(args)}::text)")
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), args


#: A chunk smaller than this is followed by a short pause (`_GATHER_SECONDS`), see `CopySink`.
SMALL_CHUNK = 64 * 1024
_GATHER_SECONDS = 0.001

Sink = Callable[[bytes], Coroutine[Any, Any, None]]


class CopyStopped(Exception):
    """A COPY cut short by its sink's failure (`failure`) or by `CopySink.stop`.

    When `connection_closed` (it was closed under the COPY), the caller invalidates it
    (SQLAlchemy then skips the rollback, which could only fail); either way it raises `failure`.
    """

    def __init__(self, failure: Exception, *, connection_closed: bool) -> None:
        super().__init__(f"the COPY was stopped: {failure!r}")
        self.failure = failure
        self.connection_closed = connection_closed


class CopySink:
    """What asyncpg's COPY writes to: the caller's sink, gathered into bigger chunks, and never
    raising into asyncpg.

    Gathering: asyncpg hands over whatever the socket held when it was read. Read as fast as the
    server writes, that is 10-20 KiB at a time, and each chunk costs a full turn of the event
    loop (pause reading, wake the task, call the sink, resume reading): measured here on a
    1,000,000 row export, 7,000 chunks and 1.4 s of client CPU, against 1,700 chunks and 0.85 s
    with a millisecond's pause after each small chunk (wall time down too: the client and the
    server share two cores). Meanwhile the server keeps writing into the socket's buffer, which
    holds far more than a millisecond's worth, so it does not wait for us; a slow, sparse COPY
    (a search matching few rows) loses at most a millisecond per chunk, and its chunks are few.

    Failures: an exception raised by a COPY sink makes asyncpg (0.32) cancel the COPY, and when
    the chunk was the last one (the COPY already over) it waits for a cancellation that never
    comes: the next statement hangs for `command_timeout`, then fails as a lost connection. So
    the caller's error is kept here instead, the connection closed under the COPY (the server
    stops at its next write), further chunks dropped, and `copy_out` raises `CopyStopped`.
    `stop` does the same from outside: another stream of the same export failed.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.failure: Exception | None = None
        self.connection: Connection | None = None

    def stop(self, failure: Exception) -> None:
        if self.failure is None:
            self.failure = failure
            if self.connection is not None:
                # Already closed if asyncpg cut the pool's proxy off from it.
                with contextlib.suppress(asyncpg.InterfaceError):
                    self.connection.terminate()

    async def __call__(self, data: bytes) -> None:
        if self.failure is not None:
            return
        try:
            await self.sink(data)
        except Exception as exc:
            self.stop(exc)
            return
        if len(data) < SMALL_CHUNK:
            await asyncio.sleep(_GATHER_SECONDS)


async def copy_out(
    connection: Connection,
    sink: Sink | CopySink,
    *,
    format: ExportFormat,
    tags: Sequence[str],
    query: str | None,
    time_limit: float,
    ids: IdRange = WHOLE,
    header: bool = True,
    raw_csv: bool = False,
) -> int:
    """Stream the matching tutorials (in `ids`), oldest first, to `sink`; the rows sent.

    `json` is NDJSON here; the caller turns the lines into an array. `header`: the CSV header
    line first. CSV cells are neutralised for spreadsheets (`_neutralised`) unless `raw_csv`.
    `time_limit` (seconds) bounds the whole COPY on the client too: asyncpg would otherwise
    apply the connection's `command_timeout`, a per-request figure, to all of it.
    Raises `CopyStopped` when the sink failed or the COPY was stopped (see `CopySink`).
    """
    guard = sink if isinstance(sink, CopySink) else CopySink(sink)
    if guard.failure is not None:  # stopped before it started
        raise CopyStopped(guard.failure, connection_closed=False)
    where, args = _where(tags, query, ids)
    csv_template = _EXPORT_CSV_RAW if raw_csv else _EXPORT_CSV
    template = {"csv": csv_template, "backup": _EXPORT_BACKUP}.get(format, _EXPORT_NDJSON)
    options = dict(_COPY_OPTIONS["csv" if format == "csv" else "ndjson"])
    if format == "csv":
        options["header"] = header
    guard.connection = connection
    try:
        status = await connection.copy_from_query(
            template.replace("{where}", where),
            *args,
            output=guard,
            timeout=time_limit,
            **options,  # type: ignore[arg-type]
        )
    except Exception:
        if guard.failure is None:
            raise
        status = ""
    finally:
        guard.connection = None  # done: a later `stop` must leave this connection alone
    if guard.failure is not None:
        raise CopyStopped(guard.failure, connection_closed=True)
    return int(status.split()[-1])


# -- restore -----------------------------------------------------------------------------------

RESTORE_STAGING = "tutorials_restore"
#: A restored row: (line, tutorial_id, name, url, description, tags, created_at, updated_at,
#: version), the columns of `RESTORE_STAGING` in order.
RESTORE_COLUMNS = ("line", *FIELDS)
RestoreRecord = tuple[int, int, str, str | None, str | None, list[str], Any, Any, int]

_CREATE_RESTORE = f"""
CREATE TEMP TABLE {RESTORE_STAGING} (
    line bigint NOT NULL,
    tutorial_id bigint NOT NULL,
    name text NOT NULL,
    url text,
    description text,
    tags text[] NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version integer NOT NULL
) ON COMMIT DROP
"""

#: Held until the restore commits: writers wait (so "empty" stays true), readers do not, and a
#: second restore waits for the first (the mode conflicts with itself).
_LOCK_FOR_RESTORE = "LOCK TABLE tutorials IN SHARE ROW EXCLUSIVE MODE"

#: The first value of `column` that two staged rows share, with both lines.
_RESTORE_DUPLICATE = f"""
SELECT {{column}}::text, min(line), max(line) FROM {RESTORE_STAGING}
WHERE {{column}} IS NOT NULL GROUP BY {{column}} HAVING count(*) > 1 ORDER BY min(line) LIMIT 1
"""

_RESTORE = f"""
INSERT INTO tutorials
    (tutorial_id, name, url, description, tags, created_at, updated_at, version)
SELECT tutorial_id, name, url, description, tags, created_at, updated_at, version
FROM {RESTORE_STAGING} ORDER BY tutorial_id
"""

#: The identity goes on after the highest id restored, and never back: an id that named a
#: tutorial once (and was deleted since) is not handed out again.
_ADVANCE_IDS = """
SELECT setval(sequence, greatest(highest, coalesce(pg_sequence_last_value(sequence), 0)))
FROM (
    SELECT pg_get_serial_sequence('tutorials', 'tutorial_id')::regclass AS sequence,
           max(tutorial_id) AS highest
    FROM tutorials
) AS ids
WHERE highest IS NOT NULL
"""


async def begin_restore(connection: Connection, timeout_ms: int) -> int:
    """Lock the table against writers and count its rows; when there are none, make the
    staging table. In the caller's transaction."""
    await set_timeouts(connection, timeout_ms)
    await connection.execute(_LOCK_FOR_RESTORE)
    stored = int(await connection.fetchval("SELECT count(*) FROM tutorials"))
    if stored == 0:
        await connection.execute(_CREATE_RESTORE)
    return stored


async def stage_restore(
    connection: Connection, records: Sequence[RestoreRecord], time_limit: float
) -> None:
    """COPY validated rows into the staging table (binary). `time_limit` (seconds) bounds the
    COPY on the client too, as in `copy_out`."""
    await connection.copy_records_to_table(
        RESTORE_STAGING, records=records, columns=RESTORE_COLUMNS, timeout=time_limit
    )


async def restore_duplicate(connection: Connection) -> tuple[str, str, int, int] | None:
    """(column, value, first line, second line) of two staged rows with the same id or url."""
    for column in ("tutorial_id", "url"):
        row = await connection.fetchrow(_RESTORE_DUPLICATE.format(column=column))
        if row is not None:
            return column, str(row[0]), int(row[1]), int(row[2])
    return None


async def finish_restore(connection: Connection, time_limit: float) -> int:
    """Insert the staged rows as they are (ids, timestamps, versions), move the identity past
    them; the rows inserted."""
    status = await connection.execute(_RESTORE, timeout=time_limit)
    await connection.execute(_ADVANCE_IDS, timeout=time_limit)
    return _count(status)
