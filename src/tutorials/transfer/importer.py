"""Bulk import: validate rows like the API does, and write them in batches at COPY speed.

The rules, and why:

- **Validated like an API request**: every row goes through `schemas.TutorialCreate` (plain
  rows through `schemas.fast_fields`, which accepts only what the model accepts, with the
  same result). A bad row is rejected with its line number and the model's reason; the good
  rows around it are imported.
- **A batch commits whole or not at all**: each batch is one unit of work
  (`Database.run`: one transaction, deadlocks and serialization failures retried). A run killed
  at any point leaves only whole batches, and running it again ends with the table a clean run
  gives, because every write is idempotent:
- **Never erases what it was not given**: a field a row does not give (a CSV without a
  `description` or `tags` column, an NDJSON object without that key) leaves the stored value as
  it is; a field given empty (an empty CSV cell, `null`, `[]`) clears it.
- **Idempotent**: rows with a url are upserted by it (`on_conflict`: "update" writes the
  fields a row gives, only if something changed, bumping its version; "skip" leaves stored
  rows alone; "error" rejects the row, reported like a bad one, and the run goes on). Rows
  without a url have no key, so a url-less row identical (same name, description and tags) to
  a stored url-less row is that row: it is not inserted again. Importing the same file twice
  leaves the same table, versions included.
- **Duplicates in one batch**: one statement cannot upsert the same url twice, so a batch keeps
  one row per url (the last under "update", the first under "skip"; under "error" the later
  ones are rejected) and one of identical url-less rows; the others count as `duplicates`.
- **Pipelined**: while the database merges batch N, batch N+1 is parsed and validated (the
  reader yields to the event loop every 64 rows), so the import runs at the speed of
  the slower of the two instead of their sum. Memory: two batches at most, and a batch is
  written once it holds `batch_size` rows or `batch_bytes` of text, whichever comes first
  (10,000 descriptions of 20,000 characters would otherwise be 200 MB a batch).
- **max_errors**: the run stops once more than that many rows were rejected. Rows read before
  the stopping row are written; nothing after it is read. A rejection found by the database
  (a conflict under "error") stops the run after its batch; the batch being prepared is dropped.
- If the database refuses a batch for a reason validation did not foresee (a constraint), the
  batch is split in halves until the offending rows are isolated and rejected, so good rows are
  still never lost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field

from pydantic import ValidationError

from tutorials.db.database import Connection, Database
from tutorials.errors import Conflict, InvalidInput
from tutorials.limits import DEFAULT_BATCH
from tutorials.schemas import TutorialCreate, fast_fields, invalid_input
from tutorials.transfer import sql
from tutorials.transfer.readers import ByteSource, RowError, SourceRow, reader_for
from tutorials.transfer.sql import OnConflict, Record

#: Text per batch (names, urls, descriptions and tags, counted in characters: a byte each for
#: ASCII): a batch is written when it reaches this or `DEFAULT_BATCH` rows, whichever first.
DEFAULT_BATCH_BYTES = 8 * 1024 * 1024
#: The statement and lock timeout of a batch's transaction, in seconds.
BATCH_TIMEOUT = 300.0
#: Rejected rows kept in `ImportSummary.errors` (all of them go to `on_error`).
KEPT_ERRORS = 1000
#: What a row that is not a mapping gives (all of it).
_ALL_FIELDS = frozenset(("name", "url", "description", "tags"))
#: While a batch is being written, give it a turn on the event loop every this many rows.
_YIELD_EVERY = 64
ON_CONFLICT_MODES: tuple[OnConflict, ...] = ("update", "skip", "error")

RowInput = SourceRow | RowError | TutorialCreate | Mapping[str, object]


@dataclass
class ImportSummary:
    """What an import did, row by row. Every row read lands in exactly one counter."""

    #: New tutorials.
    inserted: int = 0
    #: Stored tutorials (same url) that changed: new content, version + 1.
    updated: int = 0
    #: Rows equal to what was stored ("update" mode): nothing written.
    unchanged: int = 0
    #: Rows whose url (or url-less content) was already stored, left alone ("skip" mode).
    skipped: int = 0
    #: Rows superseded by another with the same key in the same batch.
    duplicates: int = 0
    #: Rows refused: unreadable, invalid, or conflicting under "error".
    rejected: int = 0
    #: The first `KEPT_ERRORS` rejections, in the order they were found.
    errors: list[RowError] = field(default_factory=list)
    #: Why the run ended before the input did (too many errors, unreadable input), or None.
    stopped: str | None = None
    #: Lines of the input after the point where it broke off (a CSV quote never closed, a
    #: JSON syntax error), which could not be read as rows: not counted in `rows`.
    unread_lines: int = 0

    @property
    def rows(self) -> int:
        """Rows read and accounted for so far."""
        return (
            self.inserted
            + self.updated
            + self.unchanged
            + self.skipped
            + self.duplicates
            + self.rejected
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "stopped": self.stopped,
            "unread_lines": self.unread_lines,
            "errors": [error.to_dict() for error in self.errors],
        }


def _unread(line: int, lines: int) -> str:
    """Which lines after `line` were not read: all of them, by number."""
    if lines == 0:
        return "nothing after it was read"
    if lines == 1:
        return f"the line after it ({line + 1:,}) was not read"
    return f"the {lines:,} lines after it ({line + 1:,} to {line + lines:,}) were not read"


def as_database(target: Database) -> Database:
    """The caller's `Database` (checked: a common mistake is passing an engine or a URL)."""
    if isinstance(target, Database):
        return target
    raise TypeError(f"expected a tutorials Database, not {type(target).__name__}")


async def _items(rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> AsyncIterator[RowInput]:
    if isinstance(rows, AsyncIterable):
        async for item in rows:
            yield item
    else:
        for item in rows:
            yield item


def _reason(error: ValidationError) -> str:
    return invalid_input(error).detail.removeprefix("invalid input: ")


def _original_text(item: object) -> str | None:
    if isinstance(item, SourceRow):
        return item.text()
    if isinstance(item, TutorialCreate):
        return item.model_dump_json()
    try:
        return json.dumps(item, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return repr(item)[:1000]
    except RecursionError:
        return None


class _Batch:
    """Rows waiting to be written, one per key (url, or the whole content when url-less)."""

    __slots__ = ("by_url", "origin", "size", "text_size", "urlless")

    def __init__(self, keep_origin: bool) -> None:
        self.by_url: dict[str, Record] = {}
        self.urlless: dict[tuple[str, str | None, tuple[str, ...]], Record] = {}
        #: line -> the input item, kept under "error" to report conflicts with their text.
        self.origin: dict[int, object] | None = {} if keep_origin else None
        self.size = 0
        #: Characters of text held (name, url, description, tags), for `batch_bytes`.
        self.text_size = 0

    def records(self) -> list[Record]:
        """The rows in input order (a line number is unique, so tuples sort by it)."""
        return sorted([*self.by_url.values(), *self.urlless.values()])


class _Importer:
    def __init__(
        self,
        database: Database,
        *,
        on_conflict: OnConflict,
        batch_size: int,
        max_errors: int | None,
        on_progress: Callable[[ImportSummary], None] | None,
        on_error: Callable[[RowError], None] | None,
        batch_timeout: float,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> None:
        if on_conflict not in ON_CONFLICT_MODES:
            raise InvalidInput(
                f"on_conflict must be one of {', '.join(ON_CONFLICT_MODES)}, not {on_conflict!r}"
            )
        if batch_size < 1:
            raise InvalidInput("batch_size must be at least 1")
        if batch_bytes < 1:
            raise InvalidInput("batch_bytes must be at least 1")
        if max_errors is not None and max_errors < 0:
            raise InvalidInput("max_errors must be 0 or more")
        self.database = database
        self.on_conflict: OnConflict = on_conflict
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.max_errors = max_errors
        self.on_progress = on_progress
        self.on_error = on_error
        self.batch_timeout = batch_timeout
        self.timeout_ms = max(1, int(batch_timeout * 1000))
        self.summary = ImportSummary()
        #: Whether the next batch tries the fast path (see `write`).
        self.direct = True
        #: The stored url-less rows' content keys, read at the first url-less batch.
        self.keys = sql.UrllessKeys()

    def reject(self, error: RowError) -> None:
        summary = self.summary
        summary.rejected += 1
        if len(summary.errors) < KEPT_ERRORS:
            summary.errors.append(error)
        if self.on_error is not None:
            self.on_error(error)
        if error.fatal and summary.stopped is None:
            summary.unread_lines = error.unread
            summary.stopped = (
                f"line {error.line}: {error.reason}; {_unread(error.line, error.unread)}"
            )
        elif (
            self.max_errors is not None
            and summary.rejected > self.max_errors
            and summary.stopped is None
        ):
            summary.stopped = f"more than {self.max_errors} rows rejected"

    def new_batch(self) -> _Batch:
        return _Batch(keep_origin=self.on_conflict == "error")

    async def run(self, rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> ImportSummary:
        summary = self.summary
        mode = self.on_conflict
        batch_size = self.batch_size
        batch_bytes = self.batch_bytes
        validate = TutorialCreate.model_validate
        fast = fast_fields
        batch = self.new_batch()
        pending: asyncio.Task[None] | None = None
        position = 0
        try:
            async for item in _items(rows):
                position += 1
                if isinstance(item, SourceRow):
                    line, data = item.line, item.data
                elif isinstance(item, RowError):
                    self.reject(item)
                    if summary.stopped is not None:
                        break
                    continue
                else:
                    line, data = position, item
                fields = fast(data) if type(data) is dict else None
                if fields is None:
                    if isinstance(data, TutorialCreate):
                        model = data
                        given: Collection[str] = model.model_fields_set
                    else:
                        try:
                            model = validate(data)
                        except ValidationError as exc:
                            self.reject(RowError(line, _reason(exc), _original_text(item)))
                            if summary.stopped is not None:
                                break
                            continue
                        given = set(data) if isinstance(data, Mapping) else _ALL_FIELDS
                    fields = (model.name, model.url, model.description, model.tags)
                else:
                    given = data  # type: ignore[assignment]  # a dict, by `fast_fields`
                name, url, description, tags = fields
                record: Record = (
                    line,
                    name,
                    url,
                    description,
                    tags,
                    "description" in given,
                    "tags" in given,
                )
                if url is not None:
                    seen = batch.by_url.get(url)
                    if seen is None or mode == "update":
                        batch.by_url[url] = record
                else:
                    key = (name, description, tuple(tags))
                    seen = batch.urlless.get(key)
                    if seen is None or mode == "update":
                        batch.urlless[key] = record
                if seen is not None:
                    if mode == "error":
                        what = "url" if url is not None else "identical url-less row"
                        self.reject(
                            RowError(
                                line,
                                f"duplicate {what}: already at line {seen[0]} of this input",
                                _original_text(item),
                            )
                        )
                        if summary.stopped is not None:
                            break
                    else:
                        summary.duplicates += 1
                    continue
                if batch.origin is not None:
                    batch.origin[line] = item
                batch.size += 1
                batch.text_size += len(name) + len(url or "") + len(description or "")
                for tag in tags:
                    batch.text_size += len(tag)
                if batch.size >= batch_size or batch.text_size >= batch_bytes:
                    if pending is not None:
                        await pending
                        pending = None
                        if summary.stopped is not None:
                            # stopped by the database's rejections: drop the rows read since
                            batch = self.new_batch()
                            break
                    pending = asyncio.create_task(self.flush(batch))
                    batch = self.new_batch()
                elif pending is not None and position % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let the batch being written move on
            stopped_while_reading = summary.stopped is not None
            if pending is not None:
                await pending
                pending = None
            # stopped by the database's rejections in the batch before: the rows read since
            # come after the stopping row and are dropped; stopped while reading: the rows in
            # the batch came before the stopping row and are written.
            if batch.size and (stopped_while_reading or summary.stopped is None):
                await self.flush(batch)
        except BaseException:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            raise
        return summary

    async def flush(self, batch: _Batch) -> None:
        await self.write(batch.records(), batch)
        if self.on_progress is not None:
            self.on_progress(self.summary)

    async def write(self, records: Sequence[Record], batch: _Batch) -> None:
        """Write records in one unit of work; if the database refuses them, bisect.

        The fast path (COPY straight into the table) is tried while the urls met are new; a
        unique violation there means some url exists, so the batch is run again through the
        staging table, and so are the next batches until one of them turns out all new.
        """
        direct = self.direct

        async def work(connection: Connection) -> sql.BatchOutcome:
            await sql.set_timeouts(connection, self.timeout_ms)
            return await sql.write_batch(
                connection, records, on_conflict=self.on_conflict, direct=direct, keys=self.keys
            )

        try:
            outcome = await self.database.transaction(work, statement_timeout=self.batch_timeout)
        except (InvalidInput, Conflict) as exc:
            if direct and isinstance(exc, Conflict):
                self.direct = False
                await self.write(records, batch)
                return
            if len(records) == 1:
                line = records[0][0]
                self.reject(
                    RowError(line, f"refused by the database: {exc.detail}", self.text(batch, line))
                )
                return
            middle = len(records) // 2
            await self.write(records[:middle], batch)
            await self.write(records[middle:], batch)
            return
        if not direct and outcome.inserted == len(records) - len(outcome.matched):
            self.direct = True  # nothing was there already: try the fast path again
        self.account(outcome, len(records), batch)

    def text(self, batch: _Batch, line: int) -> str | None:
        if batch.origin is not None and line in batch.origin:
            return _original_text(batch.origin[line])
        for record in batch.records():
            if record[0] == line:
                name, url, description, tags = record[1:5]
                return json.dumps(
                    {"name": name, "url": url, "description": description, "tags": tags},
                    ensure_ascii=False,
                )
        return None

    def account(self, outcome: sql.BatchOutcome, count: int, batch: _Batch) -> None:
        summary = self.summary
        summary.inserted += outcome.inserted
        summary.updated += outcome.updated
        settled = count - len(outcome.matched) - len(outcome.conflicts)
        rest = settled - outcome.inserted - outcome.updated
        if self.on_conflict == "update":
            summary.unchanged += rest + len(outcome.matched)
        elif self.on_conflict == "skip":
            summary.skipped += rest + len(outcome.matched)
        else:
            found = [
                (line, "an identical tutorial without url already exists")
                for line in outcome.matched
            ]
            found += [
                (line, "a tutorial with this url already exists") for line in outcome.conflicts
            ]
            for line, reason in sorted(found):
                self.reject(RowError(line, reason, self.text(batch, line)))


async def import_rows(
    target: Database,
    rows: Iterable[RowInput] | AsyncIterable[RowInput],
    *,
    on_conflict: OnConflict = "update",
    batch_size: int = DEFAULT_BATCH,
    max_errors: int | None = None,
    on_progress: Callable[[ImportSummary], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
    batch_timeout: float = BATCH_TIMEOUT,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> ImportSummary:
    """Import rows into the catalog; returns what happened to them.

    `rows` are dicts with the API's fields (`name`, `url`, `description`, `tags`),
    `TutorialCreate`s, or what the readers yield (`SourceRow` / `RowError`, with line numbers);
    a plain dict's line number is its 1-based position. A field a row does not give (a CSV
    column that is not there, a key an object leaves out) leaves a stored tutorial's value as it
    is; one given empty clears it. `on_progress` is called after each committed batch, `on_error`
    for every rejected row. Raises `InvalidInput` for bad arguments or an unreadable header, and
    `Unavailable` if the database fails (the batches committed before stay).
    `batch_timeout` (seconds) bounds each statement of a batch and its waits for locks, and
    the client waits for a batch at most that (and a second) before it gives up on the
    connection.
    A batch is written at `batch_size` rows or `batch_bytes` characters of text, whichever
    comes first: two batches at most are held at once.
    """
    importer = _Importer(
        as_database(target),
        on_conflict=on_conflict,
        batch_size=batch_size,
        max_errors=max_errors,
        on_progress=on_progress,
        on_error=on_error,
        batch_timeout=batch_timeout,
        batch_bytes=batch_bytes,
    )
    return await importer.run(rows)


async def import_file(
    target: Database,
    source: ByteSource,
    *,
    format: str,
    on_conflict: OnConflict = "update",
    batch_size: int = DEFAULT_BATCH,
    max_errors: int | None = None,
    on_progress: Callable[[ImportSummary], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
    batch_timeout: float = BATCH_TIMEOUT,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    raw_csv: bool = False,
) -> ImportSummary:
    """`import_rows` over a byte stream in `format` (csv, ndjson or json). CSV cells the export
    neutralised for spreadsheets are restored unless `raw_csv` (see `readers.read_csv`)."""
    return await import_rows(
        target,
        reader_for(format, source, raw_csv=raw_csv),
        on_conflict=on_conflict,
        batch_size=batch_size,
        max_errors=max_errors,
        on_progress=on_progress,
        on_error=on_error,
        batch_timeout=batch_timeout,
        batch_bytes=batch_bytes,
    )


async def restore_file(
    target: Database, source: ByteSource, *, statement_timeout: float | None = None
) -> int:
    """Restore a backup (`export_rows(..., format="backup")`) into an empty catalog, as it was:
    ids, timestamps and versions; the number of tutorials restored. All of it or nothing; a
    catalog with tutorials in it is refused (`Conflict`). See `tutorials.service.restore`;
    `statement_timeout` (seconds) bounds each statement, the default an hour."""
    from tutorials import service
    from tutorials.transfer.readers import read_ndjson

    database = as_database(target)
    rows = read_ndjson(source)
    if statement_timeout is None:
        return await service.restore(database, rows)
    return await service.restore(database, rows, statement_timeout=statement_timeout)
