"""The Typer app and what every command shares: running async work, output, exit codes, help.

A command never prints a traceback for something the user did or the database said: domain
errors become one line on stderr and an exit code that says what kind of failure it was.

**Start-up is part of every command's time**, so this module and every command module import
at their top only Typer and light parts of the standard library; a command imports what it
uses when it runs (asyncpg, pydantic, settings, Rich for a table), and what only other commands
use (SQLAlchemy, Alembic, the API, uvicorn) never. `tutorials --help` thus costs Typer and
nothing else, `tutorials get` the service's path and nothing else (measured by
`benchmarks/cli.py`; tests/cli/test_startup.py checks what each command imports).

**Help reads as prose**: option and argument names with a word for their value (`--url URL`,
`ID`, `FILE`), never a Python type (`<str>`, `<bool>`, `<list[str]>`), and flags without any
(`--json`, not `--json <bool>`, which invited `--json true`). `Command` and `Group` render it
through Click's public formatter API; the usage line names required arguments bare and optional
ones in brackets, as Unix manuals do.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from tutorials.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    StaleVersion,
    TutorialsError,
    Unavailable,
)

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console

    from tutorials.db.database import Database
    from tutorials.schemas import TutorialRead, TutorialRecord

T = TypeVar("T")
P = ParamSpec("P")

EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5

_EXIT_CODES: tuple[tuple[type[TutorialsError], int], ...] = (
    (InvalidInput, EXIT_INVALID),
    (NotFound, EXIT_NOT_FOUND),
    (Conflict, EXIT_CONFLICT),
    (StaleVersion, EXIT_CONFLICT),
    (Unavailable, EXIT_UNAVAILABLE),
)


# --- Help ---------------------------------------------------------------------------------


def _value_name(param: Any) -> str:
    """What stands for a parameter's value in help: its metavar, else its name in capitals."""
    metavar = getattr(param, "metavar", None)
    return str(metavar) if metavar else str(param.name or "").upper()


def _help_record(param: Any) -> tuple[str, str] | None:
    """(names, help) of a parameter, without Python types."""
    if getattr(param, "hidden", False):
        return None
    text = str(getattr(param, "help", None) or "")
    if isinstance(param, TyperArgument):
        return _value_name(param), text
    if not isinstance(param, TyperOption):
        return None
    names = ", ".join([*param.opts, *param.secondary_opts])
    if not param.is_flag and not param.count:
        names += f" {_value_name(param)}"
    default = param.default
    shown = param.show_default is not False and not param.is_flag and not param.required
    if shown and default not in (None, "", (), []) and not callable(default):
        text = f"{text} [default: {default}]" if text else f"[default: {default}]"
    return names, text


def _format_parameters(command: Any, ctx: Any, formatter: Any) -> None:
    arguments: list[tuple[str, str]] = []
    options: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = _help_record(param)
        if record is not None:
            (arguments if isinstance(param, TyperArgument) else options).append(record)
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    if options:
        with formatter.section("Options"):
            formatter.write_dl(options)


def _usage(pieces: Sequence[str]) -> list[str]:
    """Typer writes a required argument as `{ID}`; a manual writes it `ID`."""
    return [
        piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece for piece in pieces
    ]


class Command(TyperCommand):
    """A command whose help reads as prose (see the module docstring)."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_parameters(self, ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(super().collect_usage_pieces(ctx))


class Group(TyperGroup):
    """A group of commands whose own help reads as prose, like `Command`'s."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_parameters(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(super().collect_usage_pieces(ctx))


def new_app(help: str, **options: Any) -> typer.Typer:
    """A Typer app (or group of subcommands) with plain, prose help."""
    return typer.Typer(
        cls=Group,
        help=help,
        no_args_is_help=True,
        rich_markup_mode=None,  # Click's plain formatter: no Rich import for --help
        pretty_exceptions_enable=False,
        add_completion=False,
        **options,
    )


app = new_app(
    "A catalog of tutorials in PostgreSQL. Uses DATABASE_URL, or an embedded PostgreSQL "
    "when it is unset.\n\n"
    "\b\nExamples:\n"
    '  tutorials add "Async SQLAlchemy" --url https://example.com/a --tag python\n'
    '  tutorials search "async postgres"\n'
    "  tutorials serve\n\n"
    "Exit codes: 0 ok, 1 error, 2 invalid input, 3 not found, 4 conflict or stale version, "
    "5 database unavailable. `tutorials COMMAND --help` says more about each command.",
    name="tutorials",
)


def command(
    target: typer.Typer,
    function: Callable[..., None],
    name: str | None = None,
    help: str | None = None,
) -> None:
    """Register `function` as a command of `target`, guarded, with prose help."""
    target.command(name, cls=Command, help=help)(guarded(function))


# --- Failing --------------------------------------------------------------------------------


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One clear line on stderr, then exit non-zero."""
    error_line(f"error: {message}")
    raise typer.Exit(code)


def error_line(text: str) -> None:
    """A line on stderr, its control characters made visible (never a terminal escape)."""
    sys.stderr.write(printable(text) + "\n")
    sys.stderr.flush()


def exit_code_for(error: TutorialsError) -> int:
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_ERROR


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """Wrap a command so domain errors end it with one line on stderr and their exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except TutorialsError as error:
            fail(error.detail, exit_code_for(error))
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


# --- Running --------------------------------------------------------------------------------


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run async work; database failures leave as domain errors (see `guarded`)."""
    import asyncio

    return asyncio.run(_run(work))


async def _run(work: Callable[[], Awaitable[T]]) -> T:
    from tutorials.errors import classify

    try:
        return await work()
    except Exception as exc:
        domain = classify(exc)
        if domain is None:
            raise
        raise domain from exc


def with_database(work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the configured database for one command, run `work`, and always dispose it."""
    from tutorials.db.session import connect

    async def scoped() -> T:
        database = await connect()
        try:
            return await work(database)
        finally:
            await database.dispose()

    return run(scoped)


# --- Output ---------------------------------------------------------------------------------

#: C0 and C1 control characters but tab and newline, shown escaped in human output: text from
#: the catalog must not be able to move a terminal's cursor or retitle its window.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
del _CONTROLS[0x09], _CONTROLS[0x0A]


def printable(text: str) -> str:
    return text.translate(_CONTROLS)


@functools.cache
def console() -> Console:
    """Rich's console on stdout, made when a command first prints a table."""
    from rich.console import Console

    return Console()


@functools.cache
def error_console() -> Console:
    """Rich's console on stderr (progress bars)."""
    from rich.console import Console

    return Console(stderr=True)


def say(text: str) -> None:
    """A line of human output on stdout."""
    sys.stdout.write(printable(text) + "\n")


def to_read(tutorial: TutorialRecord) -> TutorialRead:
    from tutorials.schemas import TutorialRead

    return TutorialRead.model_validate(tutorial, from_attributes=True)


def print_json(value: BaseModel) -> None:
    """Machine output: the model's column names, ISO timestamps, one JSON document."""
    sys.stdout.write(value.model_dump_json(indent=2) + "\n")


def print_one(item: TutorialRecord) -> None:
    """Human output for a single tutorial: every column on its own line, names aligned."""
    from tutorials.repository import FIELDS  # loaded already: it made `item`

    width = max(len(field) for field in FIELDS)
    for field in FIELDS:
        value = getattr(item, field)
        shown = ", ".join(value) if isinstance(value, list) else value
        say(f"{field:<{width}}  {'' if shown is None else shown}".rstrip())


def print_table(tutorials: Iterable[TutorialRecord]) -> None:
    """Human output: a table that fits the terminal.

    Names and tags wrap between words; a url never wraps (a url broken across lines cannot be
    copied): one too long for its column is cut short with `…`, and `tutorials get ID` (or
    `--json`) shows it whole. The url column gets at most two fifths of what the fixed columns
    (id, version, date) leave, so names stay readable at 80 columns.
    """
    from rich import box  # imported by the commands that print one, not at start-up
    from rich.table import Table
    from rich.text import Text  # plain text: a `[b]` in a name is not markup

    items = list(tutorials)
    id_width = max(2, *(len(str(item.tutorial_id)) for item in items))
    longest_url = max(3, *(len(item.url or "") for item in items))
    # two spaces between columns (a space of padding, a space of rule), none at the edges;
    # version and date are 7 and 10 wide
    flexible = console().width - 2 * 5 - id_width - 7 - 10
    url_width = min(longest_url, max(12, flexible * 2 // 5))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("id", no_wrap=True, justify="right")
    table.add_column("name", ratio=3, overflow="fold")
    table.add_column("url", width=url_width, no_wrap=True, overflow="ellipsis")
    table.add_column("tags", ratio=2, overflow="fold")
    table.add_column("version", no_wrap=True, justify="right")
    table.add_column("updated", no_wrap=True)
    for item in items:
        table.add_row(
            str(item.tutorial_id),
            Text(printable(item.name)),
            Text(printable(item.url or "")),
            Text(printable(", ".join(item.tags))),
            str(item.version),
            item.updated_at.strftime("%Y-%m-%d"),
        )
    console().print(table)
