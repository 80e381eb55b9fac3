"""Row validation for bulk import: `schemas.TutorialCreate`'s rules, with a fast path.

`TutorialCreate` checks urls and tags character by character in Python (Unicode categories,
`urlsplit`), ~13 µs a row: at a million rows that is the import's main CPU cost, on the same
two cores PostgreSQL needs. Most rows in real files are plain: printable-ASCII urls and tags.
`fast_record` recognises exactly such rows with a few C-level string operations and regular
expressions and returns what `TutorialCreate` would produce for them; for anything else it
returns None and the row goes through `TutorialCreate` itself. So the fast path never rejects
anything, and every rejection (and its reason) comes from the same model as the API's.

Why the shortcut gives the same answer, rule by rule (see `schemas.py`):

- name: same checks in the same order (length of the raw value, no NUL, encodable, stripped,
  not blank, length after stripping): all C-level already, so simply repeated here.
- url: `_URL` only matches `http://` or `https://` (lowercase, so the scheme is kept as is),
  a non-empty host of letters, digits, dots and dashes (so `urlsplit` finds a netloc and a
  hostname, and cannot raise on brackets), then printable ASCII without spaces (no Unicode
  category C or Z). No surrounding whitespace, so stripping changes nothing.
- description: length, no NUL, encodable: the model's only rules.
- tags: a real list of at most `TAGS_MAX` strings; each printable ASCII, at most `TAG_MAX`
  long, without `,` `;` or surrounding spaces; normalised by `lower()` (the model strips, which
  changes nothing here, then lowercases); duplicates dropped, first kept.
- only the four known keys, of exactly these types (`type(x) is str`: pydantic's lax mode
  would accept more, and those go the slow way).

`tests/test_transfer.py` checks the equivalence on a corpus of tricky values and on random
ones (hypothesis).
"""

from __future__ import annotations

import re

from tutorials.schemas import DESCRIPTION_MAX, NAME_MAX, TAG_MAX, TAGS_MAX, URL_MAX

#: What a row becomes: (name, url, description, tags), as `TutorialCreate` would store it.
Fields = tuple[str, str | None, str | None, list[str]]

_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(?::[0-9]*)?(?:[/?#][!-~]*)?")
_TAG = re.compile(r"[!-+\--:<-~](?:[ -+\--:<-~]*[!-+\--:<-~])?")  # printable, no , ; edges
_KEYS = frozenset(("name", "url", "description", "tags"))


def _storable(value: str) -> bool:
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fast_fields(data: object) -> Fields | None:
    """The row as `TutorialCreate` would accept it, or None: "ask `TutorialCreate`"."""
    if type(data) is not dict or not _KEYS.issuperset(data):
        return None
    name = data.get("name")
    if type(name) is not str or len(name) > NAME_MAX * 4 or not _storable(name):
        return None
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        return None
    url = data.get("url")
    if url is not None and (
        type(url) is not str or len(url) > URL_MAX or _URL.fullmatch(url) is None
    ):
        return None
    description = data.get("description")
    if description is not None and (
        type(description) is not str
        or len(description) > DESCRIPTION_MAX
        or not _storable(description)
    ):
        return None
    raw_tags = data.get("tags", [])
    if type(raw_tags) is not list or len(raw_tags) > TAGS_MAX:
        return None
    tags: list[str] = []
    for tag in raw_tags:
        if type(tag) is not str or len(tag) > TAG_MAX or _TAG.fullmatch(tag) is None:
            return None
        tags.append(tag.lower())
    if len(tags) > 1:
        tags = list(dict.fromkeys(tags))
    return name, url, description, tags
