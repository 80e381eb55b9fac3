"""Catalog commands: add, get, list, search, update, delete.

Each validates its arguments with the same schemas as the HTTP API, then runs one unit of
work through the repository.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer
from pydantic import ValidationError

from tutorials import repository
from tutorials.cli._app import (
    EXIT_NOT_FOUND,
    fail,
    guarded,
    print_json,
    print_one,
    print_table,
    stdout,
    to_read,
    with_database,
)
from tutorials.errors import NotFound
from tutorials.repository import Page
from tutorials.schemas import (
    PAGE_MAX,
    TutorialCreate,
    TutorialPage,
    TutorialPatch,
    TutorialRead,
    check_id,
    check_query,
    check_tags,
    check_version,
    invalid_input,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TagOption = Annotated[
    list[str] | None, typer.Option("--tag", "-t", help="A tag (repeat for several).")
]
IdArgument = Annotated[str, typer.Argument(help="The tutorial's id.", show_default=False)]
LimitOption = Annotated[
    int, typer.Option("--limit", "-n", help=f"How many to show (1..{PAGE_MAX}).")
]
CursorOption = Annotated[
    str | None, typer.Option("--cursor", help="Continue after a previous page (its next_cursor).")
]


_DIGITS = re.compile(r"[0-9]{1,20}")


def parse_id(raw: str) -> int:
    """An id from the command line, refused clearly if it cannot be a tutorial's id."""
    # ASCII digits only: int() would also read "1_0" as 10 and fullwidth digits as ASCII, silently
    # addressing another tutorial than the one typed.
    if not _DIGITS.fullmatch(raw):
        fail(f"tutorial id must be a whole number, got {raw!r}", 2)
    return check_id(int(raw))


def add(
    name: Annotated[str, typer.Argument(help="The tutorial's name.", show_default=False)],
    url: Annotated[str | None, typer.Option(help="Its http(s) address (unique).")] = None,
    description: Annotated[str | None, typer.Option(help="What it teaches.")] = None,
    tag: TagOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a tutorial."""
    try:
        data = TutorialCreate(name=name, url=url, description=description, tags=tag or [])
    except ValidationError as exc:
        raise invalid_input(exc) from None
    saved = with_database(lambda db: db.run(lambda s: repository.add(s, data.model_dump())))
    _show(to_read(saved), as_json)


def get(tutorial_id: IdArgument, as_json: JsonOption = False) -> None:
    """Show one tutorial."""
    key = parse_id(tutorial_id)
    found = with_database(lambda db: db.run(lambda s: repository.get(s, key)))
    if found is None:
        fail(f"tutorial {key} not found", EXIT_NOT_FOUND)
    _show(to_read(found), as_json)


def list_(
    tag: TagOption = None,
    limit: LimitOption = 20,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tutorials, oldest first (only those carrying every --tag given)."""
    tags = check_tags(tag or [])
    page = with_database(
        lambda db: db.run(lambda s: repository.list_page(s, limit=limit, cursor=cursor, tags=tags))
    )
    _show_page(page, as_json)


def search(
    query: Annotated[str, typer.Argument(help='Words, "a phrase", -excluded, or.')],
    tag: TagOption = None,
    limit: LimitOption = 20,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Full-text search over name, description and tags, best match first."""
    text, tags = check_query(query), check_tags(tag or [])
    page = with_database(
        lambda db: db.run(
            lambda s: repository.search(s, text, limit=limit, cursor=cursor, tags=tags)
        )
    )
    _show_page(page, as_json)


def update(
    tutorial_id: IdArgument,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    url: Annotated[str | None, typer.Option(help="A new url ('' clears it).")] = None,
    description: Annotated[
        str | None, typer.Option(help="A new description ('' clears it).")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Replace the tags (repeat).")
    ] = None,
    clear_tags: Annotated[bool, typer.Option("--clear-tags", help="Remove all tags.")] = False,
    expected_version: Annotated[
        int | None,
        typer.Option("--if-version", help="Only if the tutorial is still at this version."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change some fields of a tutorial (the others stay as they are)."""
    key = parse_id(tutorial_id)
    expected_version = check_version(expected_version)
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
    try:
        changes = TutorialPatch.model_validate(sent).changes()
    except ValidationError as exc:
        raise invalid_input(exc) from None
    if not changes:
        fail("nothing to update: give at least one of --name, --url, --description, --tag", 2)
    saved = with_database(
        lambda db: db.run(
            lambda s: repository.update(s, key, changes, expected_version=expected_version)
        )
    )
    _show(to_read(saved), as_json)


def delete(
    tutorial_id: IdArgument,
    expected_version: Annotated[
        int | None,
        typer.Option("--if-version", help="Only if the tutorial is still at this version."),
    ] = None,
) -> None:
    """Delete a tutorial."""
    key = parse_id(tutorial_id)
    expected_version = check_version(expected_version)
    deleted = with_database(
        lambda db: db.run(lambda s: repository.delete(s, key, expected_version=expected_version))
    )
    if not deleted:
        raise NotFound(f"tutorial {key} not found")
    stdout.print(f"deleted tutorial {key}")


def _show(item: TutorialRead, as_json: bool) -> None:
    if as_json:
        print_json(item)
    else:
        print_one(item)


def _show_page(page: Page, as_json: bool) -> None:
    items = [to_read(t) for t in page.items]
    if as_json:
        print_json(TutorialPage(items=items, next_cursor=page.next_cursor))
        return
    print_table(items)
    if page.next_cursor:
        stdout.print(f"more: --cursor {page.next_cursor}", highlight=False)


def register(app: typer.Typer) -> None:
    for command in (add, get, search, update, delete):
        app.command()(guarded(command))
    app.command("list")(guarded(list_))
