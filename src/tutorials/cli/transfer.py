"""`tutorials import`, `export` and `restore`: bulk transfer from and to files, at COPY speed.

The work is `tutorials.transfer`'s; this module only opens files, shows progress and the
summary, and picks the exit code:

- 0: every row was imported (or exported);
- 1: the run finished, but some rows were rejected, or it stopped early (`--max-errors`, an
  unreadable JSON array); the good rows are in, the summary says what happened to the rest;
  or an export's output could not be written (a full disk: one line naming the file, never
  "cannot reach the database");
- 2: nothing was done: a usage error (no such file, unknown format, bad CSV header, ...);
- 5: the database is unavailable (batches committed before stay: run the import again).

Progress goes to stderr: a bar with rows/s and ETA on a terminal, a plain line every few
seconds otherwise, nothing with `--quiet`. The summary goes to stdout (a table, or `--json`).
An input that breaks off (a CSV quote never closed) ends the import at the break, and the
summary says how many lines after it were not read.

`export --format backup` and `restore` keep what an import cannot: ids, timestamps and
versions. `restore` puts a backup back into an empty catalog, exactly as it was, or refuses.

`tutorials.transfer` (and Rich, for the bar and the summary) are imported when a command runs,
not when the command line starts.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from tutorials.cli._app import (
    EXIT_ERROR,
    EXIT_INVALID,
    command,
    error_console,
    error_line,
    fail,
    say,
    with_database,
)
from tutorials.errors import TutorialsError
from tutorials.limits import DEFAULT_BATCH

if TYPE_CHECKING:
    from rich.progress import Progress

    from tutorials.transfer import ExportWriteError, ImportSummary, OnConflict, RowError

#: Formats by command (`tutorials.transfer` says the same; tests/cli check they agree).
IMPORT_FORMATS = ("csv", "ndjson", "json")
EXPORT_FORMATS = ("csv", "ndjson", "json", "backup")
ON_CONFLICT_MODES: tuple[OnConflict, ...] = ("update", "skip", "error")

#: Exit code of an import that rejected rows or stopped early (the good rows are in).
EXIT_REJECTED = EXIT_ERROR
#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_PROGRESS_EVERY = 5.0
#: Rejected rows shown on stderr at the end (all of them go to --errors FILE).
SHOWN_ERRORS = 5
#: COPY streams of an export to a file (`--jobs`). One, like psql and pg_dump: on this
#: project's 2-core machines a second stream only competed with the first for the server's
#: cores (1M rows: 0.98-1.04 s with one, 1.16-1.22 s with two; benchmarks/RESULTS.md). More
#: pay off where the server has idle cores, since it formats every row.
EXPORT_JOBS = 1

_EXTENSIONS = {
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
    ".backup": "backup",
}


class _ReaderGone(Exception):
    """Standard output was closed by its reader (`tutorials export | head`)."""


def guess_format(path: str, given: str | None, known: tuple[str, ...]) -> str:
    """The format asked for, or the one the file's extension names."""
    if given is not None:
        if given not in known:
            fail(f"unknown format {given!r}: use one of {', '.join(known)}", EXIT_INVALID)
        return given
    guessed = _EXTENSIONS.get(Path(path).suffix.lower()) if path != "-" else None
    if guessed is None or guessed not in known:
        fail(
            f"cannot tell the format of {path!r}: give --format ({', '.join(known)})",
            EXIT_INVALID,
        )
    return guessed


class CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read from it (for progress and ETA)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _size_of(file: IO[bytes]) -> int | None:
    try:
        info = os.fstat(file.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _export_write_error() -> type[ExportWriteError]:
    from tutorials.transfer import ExportWriteError

    return ExportWriteError


def _writable(text: str) -> str:
    """The text as read: bytes that were not UTF-8 go back out as they came (surrogateescape);
    anything else that cannot be encoded (a lone surrogate from a library caller) is escaped."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class ErrorsFile:
    """Rejected rows written as they come: CSV (line,reason,text) or NDJSON, by extension."""

    def __init__(self, path: str) -> None:
        try:
            self.file = open(path, "w", encoding="utf-8", newline="", errors="surrogateescape")  # noqa: SIM115
        except OSError as exc:
            fail(f"cannot write {path}: {exc.strerror}", EXIT_INVALID)
        self.csv = None
        if path.lower().endswith(".csv"):
            import csv  # here, not at start-up: only an errors file needs it

            self.csv = csv.writer(self.file)
            self.csv.writerow(["line", "reason", "text"])

    def write(self, error: RowError) -> None:
        text = _writable(error.text or "")
        if self.csv is not None:
            self.csv.writerow([error.line, error.reason, text])
        else:
            record = {"line": error.line, "reason": error.reason, "text": error.text and text}
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.file.close()


class ImportProgress:
    """Progress on stderr: a Rich bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, reader: CountingReader, total: int | None, quiet: bool) -> None:
        self.reader = reader
        self.total = total
        self.started = time.monotonic()
        self.last_line = self.started
        self.bar: Progress | None = None
        terminal = sys.stderr.isatty()
        self.plain = not quiet and not terminal
        #: The summary as of the last committed batch (None before the first).
        self.last: ImportSummary | None = None
        if not quiet and terminal:
            from rich.progress import (  # only for a terminal: not part of every start-up
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("importing"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rows]:,} rows, {task.fields[rate]:,.0f} rows/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=error_console(),
                transient=True,
            )
            self.task = self.bar.add_task("import", total=total, rows=0, rate=0.0)

    def __enter__(self) -> ImportProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def rate(self, rows: int) -> float:
        return rows / max(time.monotonic() - self.started, 1e-9)

    def __call__(self, summary: ImportSummary) -> None:
        self.last = summary
        rows = summary.rows
        if self.bar is not None:
            self.bar.update(self.task, completed=self.reader.count, rows=rows, rate=self.rate(rows))
        elif self.plain and time.monotonic() - self.last_line >= PLAIN_PROGRESS_EVERY:
            self.last_line = time.monotonic()
            done = f", {100 * self.reader.count / self.total:.0f}%" if self.total else ""
            print(
                f"imported {rows:,} rows ({self.rate(rows):,.0f} rows/s{done})",
                file=sys.stderr,
                flush=True,
            )


def print_summary(summary: ImportSummary, elapsed: float) -> None:
    """The summary, a counter a line; the lines not read after a break, when there are."""
    counts = [
        (name, f"{getattr(summary, name):>10,}")
        for name in ("inserted", "updated", "unchanged", "skipped", "duplicates", "rejected")
    ]
    if summary.unread_lines:
        counts.append(("not read", f"{summary.unread_lines:>10,} lines"))
    rate = summary.rows / elapsed if elapsed > 0 else 0.0
    counts.append(("rows", f"{summary.rows:>10,} in {elapsed:.1f} s ({rate:,.0f} rows/s)"))
    for label, value in counts:
        say(f"{label:<10}  {value}")


def _open_source(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by the caller's ExitStack
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_INVALID)


def import_(
    path: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="The file to import, or - for standard input.", show_default=False
        ),
    ],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            help="csv, ndjson or json (default: from the file's extension).",
        ),
    ] = None,
    on_conflict: Annotated[
        str,
        typer.Option(
            "--on-conflict",
            metavar="MODE",
            help="A url already stored: update it (if different), skip the row, or reject it "
            "as an error.",
        ),
    ] = "update",
    errors: Annotated[
        str | None,
        typer.Option(
            "--errors",
            metavar="FILE",
            help="Write rejected rows (line, reason, text) here: .csv, else NDJSON.",
        ),
    ] = None,
    max_errors: Annotated[
        int | None,
        typer.Option(
            "--max-errors", metavar="N", min=0, help="Stop once more than N rows were rejected."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", metavar="N", min=1, help="Rows per transaction.")
    ] = DEFAULT_BATCH,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress and no summary.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    raw_csv: Annotated[
        bool,
        typer.Option(
            "--raw-csv",
            help="CSV cells as they are: do not take off the ' that `tutorials export` puts "
            "before cells a spreadsheet would run as formulas.",
        ),
    ] = False,
) -> None:
    """Import tutorials from a file (the help is IMPORT_HELP)."""
    from tutorials.transfer import import_file

    if format == "backup" or (format is None and Path(path).suffix.lower() == ".backup"):
        fail("a backup is restored, not imported: `tutorials restore FILE`", EXIT_INVALID)
    kind = guess_format(path, format, IMPORT_FORMATS)
    mode = next((known for known in ON_CONFLICT_MODES if known == on_conflict), None)
    if mode is None:
        fail(
            f"--on-conflict must be one of {', '.join(ON_CONFLICT_MODES)}, not {on_conflict!r}",
            EXIT_INVALID,
        )
    with ExitStack() as stack:
        raw = _open_source(path)
        if path != "-":
            stack.callback(raw.close)
        reader = CountingReader(raw)
        on_error: Callable[[RowError], None] | None = None
        if errors is not None:
            errors_file = ErrorsFile(errors)
            stack.callback(errors_file.close)
            on_error = errors_file.write
        progress = stack.enter_context(ImportProgress(reader, _size_of(raw), quiet))
        started = time.monotonic()
        try:
            summary = with_database(
                lambda database: import_file(
                    database,
                    reader,
                    format=kind,
                    on_conflict=mode,
                    batch_size=batch_size,
                    max_errors=max_errors,
                    on_progress=progress,
                    on_error=on_error,
                    raw_csv=raw_csv,
                )
            )
        except TutorialsError:
            progress.close()
            if progress.last is not None and not quiet:
                done = progress.last
                error_line(
                    f"before the failure: {done.inserted:,} inserted, {done.updated:,} updated "
                    "in committed batches; run the same import again to finish it"
                )
            raise
        elapsed = time.monotonic() - started
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict(), ensure_ascii=False, indent=2) + "\n")
    elif not quiet:
        print_summary(summary, elapsed)
    if summary.rejected and not quiet:
        for error in summary.errors[:SHOWN_ERRORS]:
            error_line(f"line {error.line}: {error.reason}")
        more = summary.rejected - min(len(summary.errors), SHOWN_ERRORS)
        if more > 0:
            hint = f" (all in {errors})" if errors else " (--errors FILE writes them all)"
            error_line(f"... and {more:,} more rejected rows{hint}")
    if summary.stopped is not None:
        error_line(f"stopped: {summary.stopped}")
    if summary.rejected or summary.stopped is not None:
        raise typer.Exit(EXIT_REJECTED)


def export(
    path: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="Where to write, or - for standard output.", show_default=False
        ),
    ] = "-",
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            help="csv, ndjson, json, or backup (for `tutorials restore`: ids, timestamps and "
            "versions too). Default: from the file's extension, else csv.",
        ),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag",
            "-t",
            metavar="TAG",
            help="Only tutorials with this tag (repeat: all of them).",
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--q",
            "--query",
            metavar="QUERY",
            help='Only tutorials matching this search ("a phrase", -not).',
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No closing line.")] = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            metavar="N",
            min=1,
            help="COPY streams (and connections) at once for a big export to a file: more "
            "help when the database server has idle cores.",
        ),
    ] = EXPORT_JOBS,
    raw_csv: Annotated[
        bool,
        typer.Option(
            "--raw-csv",
            help="CSV cells as stored, formulas included (import them back with --raw-csv).",
        ),
    ] = False,
) -> None:
    """Export tutorials to a file (see EXPORT_HELP)."""
    from tutorials.transfer import export_rows

    ExportWriteError = _export_write_error()
    if format is None and (path == "-" or Path(path).suffix.lower() not in _EXTENSIONS):
        kind = "csv"
    else:
        kind = guess_format(path, format, EXPORT_FORMATS)
    started = time.monotonic()
    if path == "-":
        out = sys.stdout.buffer

        async def to_stdout(data: bytes) -> None:
            # written directly: this command's event loop has nothing else to do, and a full
            # pipe holding it back holds the COPY back too, which is what we want
            try:
                out.write(data)
            except BrokenPipeError:
                raise _ReaderGone from None
            except OSError as exc:
                raise ExportWriteError(exc) from exc

        try:
            rows = with_database(
                lambda database: export_rows(
                    database, to_stdout, format=kind, tags=tag or [], query=query, raw_csv=raw_csv
                )
            )
            out.flush()
        except (_ReaderGone, BrokenPipeError):
            # the reader went away (`| head`): not an error
            _drop_stdout()
            raise typer.Exit(0) from None
        except (ExportWriteError, OSError) as exc:
            _drop_stdout()
            fail(f"cannot write to standard output: {_reason(exc)}")
    else:
        rows = _export_to_path(Path(path), kind, tag or [], query, jobs, raw_csv)
    if not quiet:
        elapsed = time.monotonic() - started
        where = "standard output" if path == "-" else path
        error_line(f"exported {rows:,} rows to {where} in {elapsed:.1f} s")


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit (of what could not be
    written) neither prints a second error nor changes the exit code."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _reason(error: ExportWriteError | OSError) -> str:
    reason = getattr(error, "reason", None)  # an ExportWriteError's: the system's words
    if isinstance(reason, str):
        return reason
    strerror = getattr(error, "strerror", None)
    return str(strerror or error) or type(error).__name__


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _export_to_path(
    target: Path,
    kind: str,
    tags: list[str],
    query: str | None,
    jobs: int = EXPORT_JOBS,
    raw_csv: bool = False,
) -> int:
    """Write the export to `target`: a regular file whole or not at all, anything else through.

    A regular file (or a new one) is written to a private temporary file beside it, which then
    replaces it, so a failed export never leaves half a file. A device, a FIFO or a symlink is
    written through, as given: replacing it would swap `/dev/null` (or the file a link points
    to) for a regular file. A big unfiltered export to a regular file runs as `jobs` COPY
    streams (see `tutorials.transfer.exporter`), their spill files beside the target.
    """
    try:
        return _write_export(target, kind, tags, query, jobs, raw_csv)
    except (_export_write_error(), OSError) as exc:  # the disk, not the database
        fail(f"cannot write {target}: {_reason(exc)}")


def _write_export(
    target: Path, kind: str, tags: list[str], query: str | None, jobs: int, raw_csv: bool
) -> int:
    from tutorials.transfer import export_rows

    if target.is_symlink() or (target.exists() and not target.is_file()):
        try:
            file = target.open("wb")
        except OSError as exc:
            fail(f"cannot write {target}: {exc.strerror}", EXIT_INVALID)
        with file:
            return with_database(
                lambda database: export_rows(
                    database, file, format=kind, tags=tags, query=query, jobs=jobs, raw_csv=raw_csv
                )
            )
    try:
        import tempfile  # here, not at start-up (it loads `random`)

        descriptor, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror}", EXIT_INVALID)
    partial = Path(name)
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else _default_mode()
        os.chmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as file:
            rows = with_database(
                lambda database: export_rows(
                    database, file, format=kind, tags=tags, query=query, jobs=jobs, raw_csv=raw_csv
                )
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def restore(
    path: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="A backup (`tutorials export FILE --format backup`), or - for standard input.",
            show_default=False,
        ),
    ],
) -> None:
    """Restore a backup into an empty catalog.

    The tutorials come back exactly as they were: ids, timestamps, versions. All of it or
    nothing: a bad row (named by its line) or two rows with one id or url refuse the whole
    backup. A catalog that is not empty is refused, not merged (exit 4):
    export a backup of it, empty it with `tutorials delete --all`, then restore.

    \b
    Examples:
      tutorials export catalog.backup --format backup
      tutorials delete --all
      tutorials restore catalog.backup

    Exit codes: 0 restored; 2 not a backup, or a bad row in it; 4 the catalog is not empty;
    5 database unavailable.
    """
    from tutorials.transfer import restore_file

    with ExitStack() as stack:
        raw = _open_source(path)
        if path != "-":
            stack.callback(raw.close)
        restored = with_database(lambda database: restore_file(database, raw))
    say(f"restored {restored:,} tutorial{'s' if restored != 1 else ''}")


IMPORT_HELP = (
    "Import tutorials from a CSV, NDJSON or JSON file.\n\n"
    "CSV has the header name,url,description,tags (tags separated by ';'); NDJSON one object "
    "per line; JSON one array of objects. The file is streamed. Every row is validated like "
    "an API request; rows with a url are upserted by it, and a url-less row identical to a "
    "stored one is not added again, so importing the same file twice changes nothing. A "
    "field a row does not give (a column the CSV header leaves out, a key an NDJSON object "
    "leaves out) keeps the stored value; a field given empty (an empty cell, null, []) "
    "clears it. Each batch commits whole or not at all: after a crash, run the same import "
    "again. A file that breaks off (a quote never closed) is read up to the break, and the "
    "summary says how many lines after it were not read. The ' that `tutorials export` puts "
    "before CSV cells a spreadsheet would run as formulas is taken off (--raw-csv: not).\n\n"
    "\b\nExamples:\n"
    "  tutorials import tutorials.csv\n"
    "  tutorials import - --format ndjson --on-conflict skip < rows.ndjson\n"
    "  tutorials import big.csv --errors rejected.csv --max-errors 100\n\n"
    "Exit codes: 0 all rows imported; 1 some rows rejected or the run stopped early (the good "
    "rows are in); 2 nothing done (usage error); 5 database unavailable."
)
EXPORT_HELP = (
    "Export tutorials to a file: CSV, NDJSON, JSON, or a backup.\n\n"
    "All of them, or those matching every --tag and --q, oldest first, from one consistent "
    "snapshot. "
    "CSV, NDJSON and JSON are what `tutorials import` reads back unchanged; a backup also "
    "keeps ids, timestamps and versions, for `tutorials restore`. A file is written whole or "
    "not at all; a big one by --jobs COPY streams at once (same bytes). CSV is safe to open "
    "in a spreadsheet: a name, description or tags cell that begins with =, +, -, @, a tab or "
    "a carriage return gets a ' in front, which import takes off (--raw-csv: cells as "
    "stored).\n\n"
    "\b\nExamples:\n"
    "  tutorials export tutorials.csv\n"
    "  tutorials export python.ndjson --tag python\n"
    "  tutorials export catalog.backup --format backup\n"
    "  tutorials export --q 'async -orm' | head\n\n"
    "Exit codes: 0 exported; 1 the output could not be written (e.g. a full disk); 2 usage "
    "error; 5 database unavailable."
)


def register(app: typer.Typer) -> None:
    command(app, import_, "import", IMPORT_HELP)
    command(app, export, "export", EXPORT_HELP)
    command(app, restore, "restore")
