"""The Typer app and what every command shares: running async work, output, exit codes.

A command never prints a traceback for something the user did or the database said: domain
errors become one line on stderr and an exit code that says what kind of failure it was.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from tutorials.db.session import Database, connect
from tutorials.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    StaleVersion,
    TutorialsError,
    Unavailable,
    classify,
)
from tutorials.models import Tutorial
from tutorials.schemas import TutorialRead

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

app = typer.Typer(
    name="tutorials",
    help=(
        "A catalog of tutorials in PostgreSQL. Uses DATABASE_URL, or an embedded PostgreSQL "
        "when it is unset.\n\nExit codes: 0 ok, 1 error, 2 invalid input, 3 not found, "
        "4 conflict or stale version, 5 database unavailable."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

stdout = Console()
stderr = Console(stderr=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One clear line on stderr, then exit non-zero."""
    stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run async work; database failures leave as domain errors (see `guarded`)."""
    return asyncio.run(_run(work))


async def _run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except Exception as exc:
        domain = classify(exc)
        if domain is None:
            raise
        raise domain from exc


def with_database(work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the configured database for one command, run `work`, and always dispose it."""

    async def scoped() -> T:
        database = await connect()
        try:
            return await work(database)
        finally:
            await database.dispose()

    return run(scoped)


def to_read(tutorial: Tutorial) -> TutorialRead:
    return TutorialRead.model_validate(tutorial)


def print_json(value: BaseModel) -> None:
    """Machine output: the model's column names, ISO timestamps, one JSON document."""
    sys.stdout.write(value.model_dump_json(indent=2) + "\n")


def print_table(tutorials: Iterable[TutorialRead]) -> None:
    """Human output: a readable table."""
    from rich.table import Table  # imported by the commands that print one, not at start-up

    table = Table(show_lines=False)
    for column in ("id", "name", "url", "tags", "version", "updated"):
        table.add_column(column, overflow="fold")
    for item in tutorials:
        table.add_row(
            str(item.tutorial_id),
            item.name,
            item.url or "",
            ", ".join(item.tags),
            str(item.version),
            item.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    stdout.print(table)


def print_one(item: TutorialRead) -> None:
    """Human output for a single tutorial: every field on its own line."""
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for field, value in item.model_dump().items():
        shown = ", ".join(value) if isinstance(value, list) else value
        table.add_row(field, "" if shown is None else str(shown))
    stdout.print(table)
