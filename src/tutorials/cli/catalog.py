"""Catalog commands: add, get, list, search, update, delete.

Each is one call of the service (`tutorials.service`), which validates with the same rules as
every other face and runs one unit of work. The service (and with it asyncpg and pydantic) is
imported when a command runs, not when the command line starts (see `_app`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer

from tutorials.cli._app import (
    EXIT_INVALID,
    command,
    fail,
    print_json,
    print_one,
    print_table,
    say,
    to_read,
    with_database,
)
from tutorials.limits import MAX_ID, PAGE_MAX

if TYPE_CHECKING:
    from tutorials.schemas import Page, TutorialRecord

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", "-t", metavar="TAG", help="A tag (repeat for several: all of them)."),
]
IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="The tutorial's id.", show_default=False)
]
LimitOption = Annotated[
    int, typer.Option("--limit", "-n", metavar="N", help=f"How many to show (1 to {PAGE_MAX}).")
]
CursorOption = Annotated[
    str | None,
    typer.Option(
        "--cursor", metavar="CURSOR", help="Go on after a previous page (the cursor it printed)."
    ),
]
IfVersionOption = Annotated[
    int | None,
    typer.Option(
        "--if-version",
        metavar="VERSION",
        help="Only if the tutorial is still at this version (else exit 4).",
    ),
]


_DIGITS = re.compile(r"[0-9]{1,20}")


def parse_id(raw: str) -> int:
    """An id from the command line, refused clearly if it cannot be a tutorial's id."""
    # ASCII digits only: int() would also read "1_0" as 10 and fullwidth digits as ASCII, silently
    # addressing another tutorial than the one typed.
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_ID:
        fail(f"tutorial id must be a whole number from 1 to {MAX_ID}, got {raw!r}", EXIT_INVALID)
    return int(raw)


def add(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The tutorial's name.", show_default=False)
    ],
    url: Annotated[
        str | None, typer.Option(metavar="URL", help="Its http(s) address (unique).")
    ] = None,
    description: Annotated[
        str | None, typer.Option(metavar="TEXT", help="What it teaches.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="TAG", help="A tag (repeat for several)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a tutorial and show it as stored (with its id).

    \b
    Examples:
      tutorials add "Async SQLAlchemy"
      tutorials add "Async SQLAlchemy" --url https://example.com/a --tag python
    """
    from tutorials import service

    data = service.new_tutorial(
        {"name": name, "url": url, "description": description, "tags": tag or []}
    )
    saved = with_database(lambda db: service.create(db, data))
    _show(saved, as_json)


def get(tutorial_id: IdArgument, as_json: JsonOption = False) -> None:
    """Show one tutorial (exit 3 if there is none).

    \b
    Examples:
      tutorials get 42
      tutorials get 42 --json
    """
    from tutorials import service

    key = parse_id(tutorial_id)
    found = with_database(lambda db: service.get(db, key))
    _show(found, as_json)


def list_(
    tag: TagOption = None,
    limit: LimitOption = 20,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tutorials, oldest first.

    All of them, or those carrying every --tag given; --limit at a time, and the cursor to
    go on with.

    \b
    Examples:
      tutorials list
      tutorials list --tag python --limit 50
    """
    from tutorials import service

    page = with_database(
        lambda db: service.list_page(db, limit=limit, cursor=cursor, tags=tag or [])
    )
    tags = ", ".join(tag or ())
    _show_page(page, as_json, f"no tutorial carries {tags}" if tags else "no tutorials yet")


def search(
    query: Annotated[
        str,
        typer.Argument(
            metavar="QUERY",
            help='Words, "a phrase", -excluded, or (as in a web search).',
            show_default=False,
        ),
    ],
    tag: TagOption = None,
    limit: LimitOption = 20,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search names, descriptions and tags, best match first.

    \b
    Examples:
      tutorials search "async postgres"
      tutorials search 'sqlalchemy -orm' --tag python
    """
    from tutorials import service

    page = with_database(
        lambda db: service.search(db, query, limit=limit, cursor=cursor, tags=tag or [])
    )
    _show_page(page, as_json, f"no tutorial matches {query!r}")


def update(
    tutorial_id: IdArgument,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="A new name.")] = None,
    url: Annotated[
        str | None, typer.Option(metavar="URL", help="A new url ('' clears it).")
    ] = None,
    description: Annotated[
        str | None, typer.Option(metavar="TEXT", help="A new description ('' clears it).")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="TAG", help="Replace the tags (repeat for several)."),
    ] = None,
    clear_tags: Annotated[bool, typer.Option("--clear-tags", help="Remove all tags.")] = False,
    expected_version: IfVersionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change some fields of a tutorial; the others stay as they are.

    With no field to change, nothing is written: the tutorial is shown as it is (after
    checking --if-version), as every face does with an empty update.

    \b
    Examples:
      tutorials update 42 --description "In depth"
      tutorials update 42 --tag python --tag asyncio --if-version 3
    """
    from tutorials import service

    key = parse_id(tutorial_id)
    sent: dict[str, object] = {}
    if name is not None:
        sent["name"] = name
    if url is not None:
        sent["url"] = url or None
    if description is not None:
        sent["description"] = description or None
    if tag:
        sent["tags"] = tag
    if clear_tags:
        sent["tags"] = []
    patch = service.patch_of(sent)
    saved = with_database(lambda db: service.update(db, key, patch, expected=expected_version))
    _show(saved, as_json)


def delete(
    tutorial_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID", help="The tutorial's id (or none, with a filter).", show_default=False
        ),
    ] = None,
    expected_version: IfVersionOption = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", metavar="TAG", help="Delete those carrying this tag (repeat: all)."
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option("--q", "--query", metavar="QUERY", help="Delete those matching this search."),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Delete every tutorial (no filter).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say how many would be deleted.")
    ] = False,
) -> None:
    """Delete a tutorial, or every tutorial a filter selects.

    A filter (--tag, --q) selects what `tutorials export` with the same filter writes: export
    it first to keep a copy. Without an id or a filter nothing is deleted unless --all says
    every tutorial is meant. --dry-run counts and deletes nothing.

    \b
    Examples:
      tutorials delete 42
      tutorials delete --tag draft --dry-run
      tutorials delete --tag draft --q "obsolete"
      tutorials delete --all
    """
    from tutorials import service

    if tutorial_id is None:
        if expected_version is not None:
            fail("--if-version needs a tutorial id", EXIT_INVALID)
        count = with_database(
            lambda db: service.delete_matching(
                db, tags=tag or [], query=query, everything=everything, dry_run=dry_run
            )
        )
        noun = "tutorial" if count == 1 else "tutorials"
        say(f"would delete {count} {noun}" if dry_run else f"deleted {count} {noun}")
        return
    if tag or query is not None or everything:
        fail("give a tutorial id or a filter (--tag, --q, --all), not both", EXIT_INVALID)
    key = parse_id(tutorial_id)
    if dry_run:
        found = with_database(lambda db: service.get(db, key))
        say(f"would delete tutorial {found.tutorial_id}")
        return
    with_database(lambda db: service.delete(db, key, expected=expected_version))
    say(f"deleted tutorial {key}")


def _show(item: TutorialRecord, as_json: bool) -> None:
    if as_json:
        print_json(to_read(item))
    else:
        print_one(item)


def _show_page(page: Page, as_json: bool, nothing: str) -> None:
    if as_json:
        from tutorials.schemas import TutorialPage

        items = [to_read(item) for item in page.items]
        print_json(TutorialPage(items=items, next_cursor=page.next_cursor))
        return
    if not page.items:
        say(nothing)
        return
    print_table(page.items)
    if page.next_cursor:
        say(f"more: --cursor {page.next_cursor}")


def register(app: typer.Typer) -> None:
    for function in (add, get, search, update, delete):
        command(app, function)
    command(app, list_, "list")
