"""Entity tags and conditional requests (RFC 9110 §8.8.3, §13).

A tutorial's ETag is its `version`, quoted: `"3"`. It is strong: two representations with the
same version are byte-for-byte the same row. `If-None-Match` (GET) uses the weak comparison,
so `W/"3"` matches; `If-Match` (PATCH, DELETE) uses the strong one, as the RFC requires, so a
weak tag never matches there. Both accept lists and `*`. A bare, unquoted tag (`If-Match: 3`,
a common hand-typed mistake) is read as if quoted. An empty list matches nothing. A value that
is not an entity-tag list at all is a 400.

A list is read element by element in Python, so its length is bounded: more than
`MAX_ENTITY_TAGS` tags (a client only ever needs the one it was given) is a 431, found after
reading that many, whatever the header's size. Without the bound a 10 MB `If-None-Match` held
the event loop for 3.9 s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.exceptions import HTTPException

#: Versions are PostgreSQL integers: a tag outside this range can never match.
MAX_VERSION = 2**31 - 1
#: Entity tags read from one `If-Match` / `If-None-Match` list; a longer list is a 431.
MAX_ENTITY_TAGS = 64

# One list element: `*`, `W/"..."`, `"..."`, or a bare token; elements are separated by commas
# with optional whitespace, and empty elements are allowed (RFC 9110 §5.6.1).
_ELEMENT = re.compile(r'(\*)|(W/)?"([\x21\x23-\x7e\x80-\xff]*)"|([\x21\x23-\x2b\x2d-\x7e]+)')
#: What `parse` reads, as a JSON-schema pattern for the OpenAPI document (at most
#: `MAX_ENTITY_TAGS` elements, empty ones included; ASCII, as clients send header values).
_ELEMENT_PATTERN = r'(\*|(W/)?"[!#-~]*"|[!#-+\--~]+)'
LIST_PATTERN = (
    rf"^[ \t]*({_ELEMENT_PATTERN}[ \t]*)?"
    rf"(,[ \t]*({_ELEMENT_PATTERN}[ \t]*)?){{0,{MAX_ENTITY_TAGS - 1}}}$"
)
_DIGITS = re.compile(r"[0-9]{1,10}")
_SPACES = re.compile(r"[ \t]*")


def etag(version: int) -> str:
    return f'"{version}"'


@dataclass(frozen=True)
class EntityTags:
    """A parsed `If-Match` / `If-None-Match` value."""

    any: bool
    strong: frozenset[str]
    weak: frozenset[str]

    def versions(self) -> frozenset[int]:
        """The versions the strong tags name (what `If-Match` can match)."""
        found = set()
        for tag in self.strong:
            if _DIGITS.fullmatch(tag) and 1 <= int(tag) <= MAX_VERSION:
                found.add(int(tag))
        return frozenset(found)

    def matches_strong(self, version: int) -> bool:
        return self.any or str(version) in self.strong

    def matches_weak(self, version: int) -> bool:
        return self.any or str(version) in self.strong or str(version) in self.weak


def _skip_spaces(value: str, position: int) -> int:
    spaces = _SPACES.match(value, position)
    return spaces.end() if spaces is not None else position


class TooManyTags(ValueError):
    """An entity-tag list longer than `MAX_ENTITY_TAGS`."""


def parse(value: str) -> EntityTags | None:
    """Parse an entity-tag list; None when it is malformed, `TooManyTags` when too long.

    Empty list elements count towards the bound too, and runs of whitespace are skipped by the
    regex engine, so the loop below runs at most `MAX_ENTITY_TAGS` + 1 times on any input.
    """
    any_ = False
    strong: set[str] = set()
    weak: set[str] = set()
    position, length = 0, len(value)
    count = 0
    while True:
        position = _skip_spaces(value, position)
        if position >= length:
            break
        count += 1
        if count > MAX_ENTITY_TAGS:
            raise TooManyTags(f"more than {MAX_ENTITY_TAGS} entity tags")
        if value[position] == ",":  # an empty list element
            position += 1
            continue
        match = _ELEMENT.match(value, position)
        if match is None:
            return None
        star, weak_prefix, quoted, bare = match.groups()
        if star:
            any_ = True
        elif quoted is not None:
            (weak if weak_prefix else strong).add(quoted)
        else:
            strong.add(bare)
        position = _skip_spaces(value, match.end())
        if position < length and value[position] != ",":
            return None
    return EntityTags(any_, frozenset(strong), frozenset(weak))


def _too_many(name: str) -> HTTPException:
    detail = f"the {name} header lists more than {MAX_ENTITY_TAGS} entity tags"
    return HTTPException(431, f"{detail}: send the one you were given")


def if_match(header: str | None) -> EntityTags | None:
    """The request's `If-Match`, None when absent; 400 when malformed, 431 when too long."""
    if header is None:
        return None
    try:
        parsed = parse(header)
    except TooManyTags:
        raise _too_many("If-Match") from None
    if parsed is None:
        raise HTTPException(400, 'malformed If-Match header: send entity tags such as "3", or *')
    return parsed


def if_none_match(header: str | None) -> EntityTags | None:
    """The request's `If-None-Match`; a malformed one is ignored (RFC 9110 allows it), one
    listing more than `MAX_ENTITY_TAGS` tags is a 431."""
    if header is None:
        return None
    try:
        return parse(header)
    except TooManyTags:
        raise _too_many("If-None-Match") from None
