"""Readers: turn a byte stream (a file, stdin, an HTTP body) into rows, streaming.

Every reader is an async generator of `SourceRow` (a line number, the fields as a dict, and the
original text for error reports) or `RowError` (a line that could not even be parsed). Memory
stays flat whatever the input size: input is read in chunks of `CHUNK` bytes, and no line or
JSON element may grow past `MAX_LINE` characters (it is rejected and skipped instead).

Line numbers are physical lines, 1-based, where the row starts (a CSV record whose quoted field
holds newlines spans several lines; it is reported at its first).

**When an input breaks off** (a CSV quote that is never closed, a JSON array with a syntax
error), nothing after the break can be read as rows: where would the next one start? The
reader then ends with a `fatal` `RowError` at the break that counts every line after it
(`unread`), and the import's summary says how many lines were not read, so they are never
dropped in silence. (A CSV quote left open used to swallow every line after it into one
"malformed" record, or 128 KiB of them and then go on from the middle of the file.)

A sync binary file is read in a worker thread, so a slow pipe on stdin never blocks the event
loop while a batch transaction is open.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO, NamedTuple

from tutorials.errors import InvalidInput

#: Bytes read from the source at a time.
CHUNK = 1 << 18
#: The longest line (NDJSON), record (CSV) or element (JSON array) accepted, in characters.
#: A description is at most 20,000 characters, so this leaves room for escapes and a long url.
MAX_LINE = 1 << 20
#: The columns a CSV file may have; `name` is required, the others may be absent.
CSV_COLUMNS = ("name", "url", "description", "tags")
#: Separator of tags inside the CSV `tags` column (validation forbids it inside a tag).
TAG_SEPARATOR = ";"
#: A cell the export neutralised for spreadsheets: `'`s, then a character that starts a
#: formula (`=`, `+`, `-`, `@`, tab, carriage return). See `restore_cell`.
_NEUTRALISED = re.compile(r"'+[=+@\t\r-]")

ByteSource = AsyncIterable[bytes] | Iterable[bytes] | IO[bytes] | IO[str]


class SourceRow(NamedTuple):
    """One parsed row: where it starts, its fields (not yet validated), its original text."""

    line: int
    data: object
    raw: str | list[str] | None = None

    def text(self) -> str | None:
        """The row as it was in the input (a CSV record is re-quoted from its fields)."""
        if isinstance(self.raw, list):
            return _csv_text(self.raw)
        return self.raw


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row: its line, why, and its original text (when there was one).

    `fatal` means the input cannot be read past this point (e.g. a JSON array with a syntax
    error, a CSV quote never closed): the rows before it stand, the rest of the input is not
    read, and `unread` counts its lines (those after `line`).
    """

    line: int
    reason: str
    text: str | None = None
    fatal: bool = False
    unread: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "reason": self.reason, "text": self.text}


Parsed = SourceRow | RowError


class _NeedMore(Exception):
    """Raised by the CSV line feed when a record continues past the lines read so far."""


class DuplicateKey(ValueError):
    """A JSON object naming the same key twice: refused, as `POST /tutorials` refuses it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r} in the JSON object")


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return result


#: Decoders for rows: one refusing duplicate keys, one plain (to find where a refused element
#: ends, so reading can go on after it).
_STRICT = json.JSONDecoder(object_pairs_hook=_object)
_PLAIN = json.JSONDecoder()
_TOO_DEEP = "invalid JSON: nested too deeply"


async def _byte_chunks(source: ByteSource) -> AsyncIterator[bytes | str]:
    if isinstance(source, AsyncIterable):
        async for item in source:
            if item:
                yield item
        return
    read = getattr(source, "read", None)
    if callable(read):
        while True:
            chunk: object = await asyncio.to_thread(read, CHUNK)
            if not chunk:
                return
            if not isinstance(chunk, bytes | str):
                raise TypeError("the source must give bytes or str")
            yield chunk
    else:
        assert isinstance(source, Iterable)
        for part in source:
            if part:
                yield part


async def text_chunks(source: ByteSource) -> AsyncIterator[str]:
    """Decoded text of `source`. UTF-8; a leading BOM is dropped.

    Bytes that are not UTF-8 become lone surrogates (`surrogateescape`), which validation
    refuses with the row's line number, instead of failing the whole input.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    first = True
    async for chunk in _byte_chunks(source):
        text = chunk if isinstance(chunk, str) else decoder.decode(chunk)
        if first and text:
            first = False
            text = text.removeprefix("\ufeff")
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


async def _line_batches(source: ByteSource) -> AsyncIterator[list[str]]:
    """Complete lines (each keeping its `\\n`, the last one maybe without), chunk by chunk.

    A line longer than `MAX_LINE` is cut: what was read of it is passed on alone, flagged by
    having no newline and being over the limit, and the rest up to the next newline is dropped.
    """
    pending = ""
    skipping = False
    async for text in text_chunks(source):
        if skipping:
            cut = text.find("\n")
            if cut < 0:
                continue
            text = text[cut + 1 :]
            skipping = False
        parts = text.split("\n")
        parts[0] = pending + parts[0]
        pending = parts.pop()
        lines = [part + "\n" for part in parts]
        if len(pending) > MAX_LINE:
            lines.append(pending)  # no newline and too long: the consumer rejects it
            pending = ""
            skipping = True
        if lines:
            yield lines
    if pending:
        yield [pending]


async def _count_lines(batches: AsyncIterator[list[str]]) -> int:
    """The lines left in `batches`, read to the end and counted (never kept)."""
    count = 0
    async for lines in batches:
        count += len(lines)
    return count


def _overlong(line: str) -> bool:
    return len(line) > MAX_LINE and not line.endswith("\n")


def _too_long(line_number: int, line: str) -> RowError:
    return RowError(
        line_number, f"line longer than {MAX_LINE} characters", line[:200] + "...", False
    )


# -- CSV ---------------------------------------------------------------------------------------


class _LineFeed:
    """The lines `csv.reader` pulls from; raises `_NeedMore` instead of blocking for input."""

    __slots__ = ("eof", "lines", "pos")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.pos = 0
        self.eof = False

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        pos = self.pos
        if pos < len(self.lines):
            self.pos = pos + 1
            return self.lines[pos]
        if self.eof:
            raise StopIteration
        raise _NeedMore


def _csv_text(fields: list[str]) -> str:
    import io

    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def restore_cell(cell: str) -> str:
    """Undo the export's neutralisation of a CSV cell: one `'` off a cell made of `'`s and then
    a formula character (the export adds exactly that `'`; a cell that starts with `'` and
    anything else was never changed). Exact for every exported cell, so an export imports back
    to the same rows; on a hand-made CSV it changes only cells already written that way."""
    if cell.startswith("'") and _NEUTRALISED.match(cell):
        return cell[1:]
    return cell


def _never_closed(record: list[str], feed: _LineFeed) -> bool:
    """Whether a CSV error is a quote left open: a record that ran over several lines and then
    to the end of the input, or past the longest field `csv` accepts (128 KiB, far beyond any
    valid field). Anything else (`"a"b`, a stray quote closed later) is one bad record, and
    reading goes on after it."""
    if len(record) < 2:
        return False
    at_end = feed.eof and feed.pos == len(feed.lines)
    return at_end or sum(len(part) for part in record) > csv.field_size_limit()


def _csv_header(fields: list[str]) -> list[str]:
    columns = [field.strip().lower() for field in fields]
    unknown = [column for column in columns if column not in CSV_COLUMNS]
    if unknown:
        raise InvalidInput(
            f"unknown CSV column {unknown[0]!r} in the header: "
            f"the columns are {', '.join(CSV_COLUMNS)} (name required)"
        )
    if "name" not in columns:
        raise InvalidInput("the CSV header has no 'name' column")
    if len(set(columns)) != len(columns):
        raise InvalidInput("a CSV column appears twice in the header")
    return columns


async def read_csv(source: ByteSource, *, raw_csv: bool = False) -> AsyncIterator[Parsed]:
    """Rows of a CSV file with a header row naming some of `name,url,description,tags`.

    Empty `url` / `description` fields mean none; `tags` are separated by `;` (empty: none).
    The `'` the export puts before a name, description or tags cell that a spreadsheet would
    run as a formula is taken off (`restore_cell`), unless `raw_csv`: cells as they are.
    A CSV field cannot tell an empty string from a missing value: both read as none.
    A header that is missing `name` or has an unknown column raises `InvalidInput` before any
    row is read.
    """
    feed = _LineFeed()
    reader = csv.reader(feed, strict=True)
    batches = _line_batches(source)
    base = 0  # lines dropped from the feed before feed.lines[0]
    columns: list[str] | None = None
    width = 0
    index_name = index_url = index_description = index_tags = -1
    while True:
        start = feed.pos
        try:
            fields = next(reader)
        except _NeedMore:
            base += start
            rest = feed.lines[start:]
            more = await anext(batches, None)
            if more is None:
                feed.eof = True
                feed.lines = rest
            else:
                feed.lines = rest + more if rest else more
            feed.pos = 0
            continue
        except StopIteration:
            return
        except csv.Error as exc:
            line = base + start + 1
            if columns is None:
                raise InvalidInput(f"the CSV header (line {line}) cannot be read: {exc}") from None
            record = feed.lines[start : feed.pos]
            if _never_closed(record, feed):
                after = feed.pos - start - 1 + len(feed.lines) - feed.pos
                yield RowError(
                    line,
                    "malformed CSV: a quoted field opened on this line is never closed",
                    record[0].rstrip("\r\n"),
                    fatal=True,
                    unread=after + await _count_lines(batches),
                )
                return
            text = "".join(record)
            if any(_overlong(item) for item in feed.lines[start : feed.pos]):
                yield _too_long(line, text)
            else:
                yield RowError(line, f"malformed CSV: {exc}", text.rstrip("\r\n"))
            continue
        line = base + start + 1
        if feed.pos - start == 1 and _overlong(feed.lines[start]):
            yield _too_long(line, feed.lines[start])
            continue
        if not fields:
            continue  # a blank line
        if columns is None:
            columns = _csv_header(fields)
            width = len(columns)
            index_name = columns.index("name")
            index_url = columns.index("url") if "url" in columns else -1
            index_description = columns.index("description") if "description" in columns else -1
            index_tags = columns.index("tags") if "tags" in columns else -1
            continue
        if len(fields) != width:
            yield RowError(line, f"expected {width} fields, found {len(fields)}", _csv_text(fields))
            continue
        name = fields[index_name]
        data: dict[str, object] = {"name": name if raw_csv else restore_cell(name)}
        if index_url >= 0:
            data["url"] = fields[index_url] or None
        if index_description >= 0:
            description = fields[index_description]
            if not raw_csv:
                description = restore_cell(description)
            data["description"] = description or None
        if index_tags >= 0:
            tags = fields[index_tags] if raw_csv else restore_cell(fields[index_tags])
            data["tags"] = tags.split(TAG_SEPARATOR) if tags else []
        yield SourceRow(line, data, fields)


# -- NDJSON ------------------------------------------------------------------------------------


async def read_ndjson(source: ByteSource) -> AsyncIterator[Parsed]:
    """Rows of newline-delimited JSON: one object per line; blank lines are skipped.

    A line that is not JSON, not an object, names a key twice, or nests too deeply to parse is
    rejected with its line number; the next line is read as usual.
    """
    line = 0
    decode = _STRICT.decode
    async for lines in _line_batches(source):
        for text in lines:
            line += 1
            if _overlong(text):
                yield _too_long(line, text)
                continue
            stripped = text.strip()
            if not stripped:
                continue
            try:
                data = decode(stripped)
            except DuplicateKey as exc:
                yield RowError(line, str(exc), stripped)
                continue
            except RecursionError:
                yield RowError(line, _TOO_DEEP, stripped[:200] + "...")
                continue
            except ValueError as exc:
                yield RowError(line, f"invalid JSON: {exc}", stripped)
                continue
            if not isinstance(data, dict):
                yield RowError(line, "expected a JSON object", stripped)
                continue
            yield SourceRow(line, data, stripped)


# -- JSON array --------------------------------------------------------------------------------


_WHITESPACE = " \t\n\r"


async def _lines_after(buffer: str, position: int, chunks: AsyncIterator[str]) -> int:
    """How many lines follow the one holding `buffer[position]`, counting what `chunks` still
    holds (read to the end, never kept)."""
    newlines = buffer.count("\n", position)
    last = buffer[-1:]
    async for more in chunks:
        newlines += more.count("\n")
        last = more[-1:] or last
    if newlines == 0:
        return 0
    return newlines - 1 + (last != "\n")


async def read_json(source: ByteSource) -> AsyncIterator[Parsed]:
    """Rows of a JSON array of objects, parsed element by element (never the whole document).

    A top-level value that is not an array raises `InvalidInput`. An element that is valid JSON
    but not a valid row (or an object naming a key twice) is rejected and the next one read; a
    syntax error, or nesting too deep to parse, ends the input (a `fatal` `RowError`): past
    it, where the next element starts cannot be known.
    """
    chunks = text_chunks(source)
    buffer = ""
    pos = 0
    line = 1
    eof = False

    async def fill() -> bool:
        nonlocal buffer, pos, eof
        more = await anext(chunks, None)
        if more is None:
            eof = True
            return False
        buffer = buffer[pos:] + more
        pos = 0
        return True

    async def skip_whitespace() -> bool:
        """Advance past whitespace; False at the end of the input."""
        nonlocal pos, line
        while True:
            end = len(buffer)
            while pos < end and buffer[pos] in _WHITESPACE:
                if buffer[pos] == "\n":
                    line += 1
                pos += 1
            if pos < end:
                return True
            if eof or not await fill():
                return False

    if not await skip_whitespace():
        return  # empty input: no rows
    if buffer[pos] != "[":
        raise InvalidInput("expected a JSON array of objects")
    pos += 1
    first = True
    while True:
        if not await skip_whitespace():
            yield RowError(line, "invalid JSON: the array is not closed", None, True)
            return
        if buffer[pos] == "]":
            pos += 1
            if await skip_whitespace():
                yield RowError(
                    line,
                    "invalid JSON: data after the array",
                    None,
                    True,
                    await _lines_after(buffer, pos, chunks),
                )
            return
        if not first:
            if buffer[pos] != ",":
                snippet = buffer[pos : pos + 40]
                unread = await _lines_after(buffer, pos, chunks)
                yield RowError(line, "invalid JSON: expected ',' or ']'", snippet, True, unread)
                return
            pos += 1
            if not await skip_whitespace():
                yield RowError(line, "invalid JSON: the array is not closed", None, True)
                return
        first = False
        refused: str | None = None
        while True:
            try:
                value, end = _STRICT.raw_decode(buffer, pos)
            except DuplicateKey as exc:
                # a complete element (the hook only runs on whole objects): find its end
                value, end = _PLAIN.raw_decode(buffer, pos)
                refused = str(exc)
            except RecursionError:
                unread = await _lines_after(buffer, pos, chunks)
                yield RowError(line, _TOO_DEEP, buffer[pos : pos + 200], True, unread)
                return
            except json.JSONDecodeError as exc:
                # near the end of what was read, the element may just continue in the next
                # chunk: read on and parse again; an error well inside the buffer is real
                incomplete = len(buffer) - exc.pos < 16 or exc.msg.startswith("Unterminated")
                if incomplete and not eof and len(buffer) - pos <= MAX_LINE and await fill():
                    continue
                where = line + buffer.count("\n", pos, exc.pos)
                reason = (
                    f"element longer than {MAX_LINE} characters"
                    if len(buffer) - pos > MAX_LINE
                    else f"invalid JSON: {exc.msg}"
                )
                unread = await _lines_after(buffer, exc.pos, chunks)
                yield RowError(where, reason, buffer[pos : pos + 200], True, unread)
                return
            # a number or literal may continue in the next chunk: read on, parse again
            partial = not isinstance(value, dict | list | str)
            if partial and end == len(buffer) and not eof and await fill():
                continue
            break
        text = buffer[pos:end]
        start_line = line
        line += text.count("\n")
        pos = end
        if refused is not None:
            yield RowError(start_line, refused, text)
        elif isinstance(value, dict):
            yield SourceRow(start_line, value, text)
        else:
            yield RowError(start_line, "expected a JSON object", text)


READERS = {"csv": read_csv, "ndjson": read_ndjson, "json": read_json}


def reader_for(format: str, source: ByteSource, *, raw_csv: bool = False) -> AsyncIterator[Parsed]:
    """The reader of `format` (csv, ndjson or json) over `source`; `raw_csv`: see `read_csv`."""
    if format == "csv":
        return read_csv(source, raw_csv=raw_csv)
    try:
        return READERS[format](source)
    except KeyError:
        raise InvalidInput(f"unknown format {format!r}: use one of {', '.join(READERS)}") from None
