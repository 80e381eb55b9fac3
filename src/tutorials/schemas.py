"""What crosses the boundary, and the one set of rules every face applies to it.

Every value a user can send is checked and normalised here, once, and every face (HTTP, CLI,
bulk import, library) goes through these models, so the same input gets the same outcome
everywhere. The rules are published as patterns (`NAME_PATTERN`, `URL_PATTERN`, `tag_pattern()`,
`TEXT_PATTERN`) that the validators apply (the tag rule character by character), so the API's
OpenAPI document describes exactly what is accepted.

Normalisation, decided once:

- **Unicode NFC** for names, descriptions, tags and search queries: two spellings of the same
  text (a precomposed `é` or `e` + combining accent) are the same tutorial and find each other.
- **Names** are trimmed; 1 to 255 characters.
- **URLs are identities**: ASCII only (percent-encode anything else; international hosts in
  their `xn--` form), scheme and host lower-cased, the default port dropped, an empty path
  written `/`. No credentials (`user:password@`) and no backslashes, which browsers and parsers
  read differently. So `HTTPS://Example.ORG:443` and `https://example.org/` are one tutorial.
- **Tags** are trimmed and lower-cased, duplicates dropped (first kept). Letters, marks,
  digits, punctuation and symbols of any script, emoji included, and spaces inside; never `,`
  or `;` (the separators of CSV files and of the command line), controls or other whitespace.

The models are built on first use (`defer_build`), not at import: building them costs a
command line start about 50 ms, and most commands (`tutorials get`, `--help`) never validate a
model.

PostgreSQL text cannot hold NUL; asyncpg cannot encode lone surrogates; `name` is
varchar(255); ids are bigint; versions are integers: all refused here, before the database.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from tutorials import limits
from tutorials.errors import FieldError, InvalidInput

# The limits (`tutorials.limits`), here too: `from tutorials.schemas import PAGE_MAX` works.
MAX_ID = limits.MAX_ID
VERSION_MAX = limits.VERSION_MAX
NAME_MAX = limits.NAME_MAX
URL_MAX = limits.URL_MAX
DESCRIPTION_MAX = limits.DESCRIPTION_MAX
TAG_MAX = limits.TAG_MAX
TAGS_MAX = limits.TAGS_MAX
PAGE_MAX = limits.PAGE_MAX
DEFAULT_PAGE = limits.DEFAULT_PAGE
QUERY_MAX = limits.QUERY_MAX


# --- Patterns: the published form of the rules --------------------------------------------


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def char_class(codes: Iterable[int]) -> str:
    """A regex character class body listing `codes` as escaped ranges (engine-neutral)."""
    parts: list[str] = []
    ordered = sorted(set(codes))
    start = previous = None
    for code in [*ordered, None]:
        if code is not None and previous is not None and code == previous + 1:
            previous = code
            continue
        if start is not None and previous is not None:
            parts.append(
                _escape(start) if start == previous else f"{_escape(start)}-{_escape(previous)}"
            )
        start = previous = code
    return "".join(parts)


#: Exactly the characters `str.strip()` removes (`str.isspace()`), spelled out so that every
#: regex engine agrees (`\s` differs between Python, ECMAScript and Rust).
WHITESPACE_CODES = (
    *range(0x09, 0x0E),
    *range(0x1C, 0x21),
    0x85,
    0xA0,
    0x1680,
    *range(0x2000, 0x200B),
    0x2028,
    0x2029,
    0x202F,
    0x205F,
    0x3000,
)
_WS = char_class(WHITESPACE_CODES)
_NUL = "\\x00"

#: Trimmed of surrounding whitespace: 1..255 characters, none of them NUL.
NAME_PATTERN = f"^[{_WS}]*[^{_WS}{_NUL}](?:[^{_NUL}]{{0,{NAME_MAX - 2}}}[^{_WS}{_NUL}])?[{_WS}]*$"
#: Any text without NUL (PostgreSQL text cannot hold it).
TEXT_PATTERN = f"^[^{_NUL}]*$"

_PORT = "(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
#: An ASCII http(s) URL: a DNS-style host, an optional port, then printable ASCII without `\`.
URL_PATTERN = (
    "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9][A-Za-z0-9.-]*"
    f"(?::{_PORT})?(?:[/?#][\\x21-\\x5b\\x5d-\\x7e]*)?$"
)

_ZERO_WIDTH_JOINER = "\u200d"  # inside emoji sequences (👩‍💻)
#: Emoji tag sequences (the flags of England, Scotland, Wales) spell their region in these.
_EMOJI_TAGS = range(0xE0020, 0xE0080)
#: What no tag may hold: control, format and surrogate characters, and separators (spaces,
#: line and paragraph separators).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


def _noncharacter(code: int) -> bool:
    """Unicode's 66 permanent noncharacters (U+FDD0..U+FDEF, and U+xFFFE, U+xFFFF of each plane)."""
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def _tag_char(char: str) -> bool:
    """A character a tag may hold anywhere (the space is allowed only inside).

    A rule of what is refused, not of what is allowed: code points this Python's Unicode
    database does not know yet are accepted (a new emoji typed on a new phone must not depend
    on which Python the service runs on), and so are private-use characters (icon fonts).
    """
    if char.isascii():
        return "!" <= char <= "~" and char not in ",;"
    if char == _ZERO_WIDTH_JOINER or ord(char) in _EMOJI_TAGS:
        return True
    return not _noncharacter(ord(char)) and unicodedata.category(char) not in _REFUSED_CATEGORIES


@functools.cache
def tag_pattern() -> str:
    """1..64 characters of any script (letters, marks, digits, punctuation, symbols, emoji),
    spaces only inside, no `,` or `;`; surrounding spaces are trimmed.

    Published in the OpenAPI document; built on first use (it walks Unicode, ≈ 0.3 s), not at
    import. Written as negated classes of the few refused characters: a class that lists the
    allowed ones names a million code points, and generators that expand a class code point by
    code point (Hypothesis's `from_regex`, under Schemathesis) spent minutes on it.
    `normalise_tag` applies the same rule character by character, and tests/test_schemas.py
    checks that the two agree.
    """
    # Surrogates are left out: a lone one is not Unicode text, JSON Schema's regex engines
    # refuse to name it, and `normalise_tag` refuses it anyway.
    refused = [
        code
        for code in range(sys.maxunicode + 1)
        if not (_tag_char(chr(code)) or 0xD800 <= code <= 0xDFFF)
    ]
    first = char_class(refused)
    inner = char_class(code for code in refused if code != 0x20)
    return f"^ *[^{first}](?:[^{inner}]{{0,{TAG_MAX - 2}}}[^{first}])? *$"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a published pattern with JSON Schema's meaning of a final `$` (end of text).

    Python's `$` also matches before a trailing newline; ECMAScript's (JSON Schema's) does not.
    """
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


_NAME_RE = compile_pattern(NAME_PATTERN)
_TEXT_RE = compile_pattern(TEXT_PATTERN)
_URL_RE = compile_pattern(URL_PATTERN)

NAME_RULE = f"must have 1 to {NAME_MAX} characters once trimmed, and no NUL"
URL_RULE = (
    "must be an http or https address of printable ASCII characters (no spaces, no control "
    "characters such as NUL), with a host name and without credentials or backslashes "
    "(percent-encode other characters; write international hosts in their xn-- form)"
)
TAG_RULE = (
    f"must have 1 to {TAG_MAX} letters, digits, punctuation, symbols or emoji, spaces only "
    "inside, and no ',' or ';', other whitespace, or control or format characters such as NUL"
)
TEXT_RULE = "must not contain NUL characters"


# --- Normalisation --------------------------------------------------------------------------


def _nfc(value: str) -> str:
    if value.isascii():
        return value
    try:
        return unicodedata.normalize("NFC", value)
    except UnicodeError:  # pragma: no cover - normalize() accepts any str
        raise ValueError("must be valid Unicode") from None


def _encodable(value: str) -> str:
    """Refuse lone surrogates: UTF-8 (hence asyncpg and PostgreSQL) cannot carry them."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def normalise_name(value: str) -> str:
    if not _NAME_RE.search(value):
        raise ValueError(NAME_RULE)
    value = _nfc(_encodable(value)).strip()
    if len(value) > NAME_MAX:  # NFC can lengthen a few scripts' text
        raise ValueError(NAME_RULE)
    return value


#: A url already in its identity form (lower-case scheme and host, a path), without a port, an
#: empty query or an empty fragment: `normalise_url` would give it back unchanged.
_IDENTITY_URL = re.compile(r"https?://[a-z0-9][a-z0-9.-]*/[\x21-\x5b\x5d-\x7e]*")


def normalise_url(value: str) -> str:
    """The url's identity: see the module docstring."""
    if _IDENTITY_URL.fullmatch(value) is not None and "?#" not in value and value[-1] not in "?#":
        return value  # the common case, already normal: no parsing
    if not _URL_RE.search(value):
        raise ValueError(URL_RULE)
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    host = parts.netloc.lower()
    default_port = ":443" if scheme == "https" else ":80"
    host = host.removesuffix(default_port)
    return urlunsplit((scheme, host, parts.path or "/", parts.query, parts.fragment))


def normalise_text(value: str) -> str:
    if not _TEXT_RE.search(value):
        raise ValueError(TEXT_RULE)
    return _nfc(_encodable(value))


#: The common case of the tag rule, checked in one regex: printable ASCII without `,` `;`,
#: spaces only inside (`normalise_tag`'s loop gives the same verdict, a character at a time).
_ASCII_TAG = re.compile(r"[!-+\--:<-~](?:[ !-+\--:<-~]*[!-+\--:<-~])?")


def normalise_tag(value: str) -> str:
    """`tag_pattern()`'s rule, then NFC, trimmed, lower-cased."""
    trimmed = value.strip(" ")
    if trimmed.isascii():
        if len(trimmed) > TAG_MAX or _ASCII_TAG.fullmatch(trimmed) is None:
            raise ValueError(TAG_RULE)
        return trimmed.lower()
    if len(trimmed) > TAG_MAX or not all(char == " " or _tag_char(char) for char in trimmed):
        raise ValueError(TAG_RULE)
    value = _nfc(_encodable(trimmed)).lower()
    if len(value) > TAG_MAX:  # NFC or lower-casing lengthened it
        raise ValueError(TAG_RULE)
    return value


def unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _published(max_length: int, pattern: str) -> FieldInfo:
    published: FieldInfo = Field(max_length=max_length, json_schema_extra={"pattern": pattern})
    return published


Name = Annotated[str, _published(NAME_MAX * 4, NAME_PATTERN), AfterValidator(normalise_name)]
Url = Annotated[str, _published(URL_MAX, URL_PATTERN), AfterValidator(normalise_url)]
Description = Annotated[
    str, _published(DESCRIPTION_MAX, TEXT_PATTERN), AfterValidator(normalise_text)
]


def _tag_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = tag_pattern()


Tag = Annotated[
    str,
    Field(max_length=TAG_MAX + 16, json_schema_extra=_tag_schema),
    AfterValidator(normalise_tag),
]
Tags = Annotated[list[Tag], Field(max_length=TAGS_MAX), AfterValidator(unique)]
TutorialId = Annotated[int, Field(ge=1, le=MAX_ID)]
Version = Annotated[int, Field(ge=1, le=VERSION_MAX)]
PageLimit = Annotated[int, Field(ge=1, le=PAGE_MAX)]


# --- Models ---------------------------------------------------------------------------------


class TutorialCreate(BaseModel):
    """A new tutorial. Only `name` is required; `tags` are stored lower-case, without duplicates."""

    model_config = ConfigDict(extra="forbid", title="TutorialCreate", defer_build=True)

    name: Name
    url: Url | None = None
    description: Description | None = None
    tags: Tags = Field(default_factory=list)


class TutorialPatch(BaseModel):
    """A partial update with JSON merge patch meaning: absent = unchanged, null = cleared.

    `name` cannot be cleared (it is required); clearing `tags` leaves an empty list.
    """

    model_config = ConfigDict(extra="forbid", title="TutorialPatch", defer_build=True)

    name: Name | None = None
    url: Url | None = None
    description: Description | None = None
    tags: Tags | None = None

    def changes(self) -> dict[str, object]:
        """The fields the caller actually sent, with null meaning "clear"."""
        sent = self.model_dump(exclude_unset=True)
        if "name" in sent and sent["name"] is None:
            raise InvalidInput(
                "invalid input: name: cannot be null (it is required)",
                [FieldError(("name",), "cannot be null (it is required)")],
            )
        if "tags" in sent and sent["tags"] is None:
            sent["tags"] = []
        return sent


@dataclass(slots=True)
class TutorialRecord:
    """A tutorial as stored: a plain snapshot, attached to no session.

    What the service hands every face. Building one costs a tenth of a microsecond (an ORM
    instance costs ten), which matters for pages of a hundred. Change a field and pass it to
    `save_tutorial` to write it back, conditioned on its `version`.

    `commit_lsn`: on a record a write returned, with read replicas configured, where the write
    committed in the primary's WAL (`0/16B3748`): pass it as `after_lsn` to a read, in any
    process, to read at least this. None otherwise. Not part of equality.
    """

    tutorial_id: int
    name: str
    url: str | None
    description: str | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    version: int
    commit_lsn: str | None = field(default=None, compare=False)


@dataclass(slots=True)
class Page:
    """One page of tutorials and the cursor of the next one (None on the last page)."""

    items: list[TutorialRecord]
    next_cursor: str | None


class TutorialRead(BaseModel):
    """A stored tutorial, as every face shows it (the model's column names)."""

    model_config = ConfigDict(from_attributes=True, defer_build=True)

    tutorial_id: int
    name: str
    url: str | None
    description: str | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    version: int


class TutorialPage(BaseModel):
    """One page of a keyset-paginated listing; `next_cursor` is null on the last page."""

    model_config = ConfigDict(defer_build=True)

    items: list[TutorialRead]
    next_cursor: str | None


# --- The same rules without pydantic's cost ----------------------------------------------------
#
# `TutorialCreate.model_validate` costs about 13 µs a row, most of it pydantic's machinery
# around the checks: a bulk import's main CPU cost, and a third of a library insert's.
# `fast_fields` applies the very same normalisers the model's validators call, and the same
# length limits, to input of exactly the expected shape (a dict of `str`s, a list of `str`
# tags). For anything else, and for any value a normaliser refuses, it returns None and the
# input goes through `TutorialCreate` itself, which gives the verdict and its message. So
# there is one set of rules, and this path can never accept what the model refuses
# (tests/test_transfer.py checks the agreement on tricky and random input).

#: What a row becomes: (name, url, description, tags), as `TutorialCreate` would store it.
Fields = tuple[str, str | None, str | None, list[str]]

_KEYS = frozenset(("name", "url", "description", "tags"))
#: The models' `max_length`s on the raw values (see `Name`, `Tag`, ...).
_NAME_RAW_MAX = NAME_MAX * 4
_TAG_RAW_MAX = TAG_MAX + 16


def fast_fields(data: object) -> Fields | None:
    """The row as `TutorialCreate` would store it, or None: "ask `TutorialCreate`"."""
    if type(data) is not dict or not _KEYS.issuperset(data):
        return None
    name = data.get("name")
    url = data.get("url")
    description = data.get("description")
    raw_tags = data.get("tags", [])
    if (
        type(name) is not str
        or len(name) > _NAME_RAW_MAX
        or (url is not None and (type(url) is not str or len(url) > URL_MAX))
        or (
            description is not None
            and (type(description) is not str or len(description) > DESCRIPTION_MAX)
        )
        or type(raw_tags) is not list
        or len(raw_tags) > TAGS_MAX
    ):
        return None
    try:
        tags = []
        for tag in raw_tags:
            if type(tag) is not str or len(tag) > _TAG_RAW_MAX:
                return None
            tags.append(normalise_tag(tag))
        return (
            normalise_name(name),
            None if url is None else normalise_url(url),
            None if description is None else normalise_text(description),
            unique(tags) if len(tags) > 1 else tags,
        )
    except ValueError:
        return None


# --- Checks for the values that are not models ----------------------------------------------


def invalid_input(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> InvalidInput:
    """Turn pydantic's error list into one `InvalidInput` naming every bad field."""
    errors = [
        FieldError(prefix + tuple(item["loc"]), item["msg"].removeprefix("Value error, "))
        for item in error.errors(include_url=False, include_input=False)
    ]
    return InvalidInput(f"invalid input: {describe(errors)}", errors)


#: How many field errors an `InvalidInput` lists; the rest are counted (a body of 90,000 bad
#: keys must not become a 10 MB answer).
MAX_FIELD_ERRORS = 20


def describe(errors: Sequence[FieldError]) -> str:
    shown = "; ".join(
        f"{'.'.join(str(part) for part in e.loc) or 'body'}: {e.msg}"
        for e in errors[:MAX_FIELD_ERRORS]
    )
    hidden = len(errors) - MAX_FIELD_ERRORS
    return f"{shown}; and {hidden} more" if hidden > 0 else shown


def check_version(version: int | None) -> int | None:
    """An expected version (optimistic concurrency) that the integer column could hold."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION_MAX:
        message = f"must be a whole number from 1 to {VERSION_MAX}"
        raise InvalidInput(
            f"invalid input: version: {message}", [FieldError(("version",), message)]
        )
    return version


def check_id(tutorial_id: int) -> int:
    """Refuse ids no row can have before they reach asyncpg (which overflows past bigint)."""
    if (
        isinstance(tutorial_id, bool)
        or not isinstance(tutorial_id, int)
        or not 1 <= tutorial_id <= MAX_ID
    ):
        message = f"must be a whole number from 1 to {MAX_ID}"
        raise InvalidInput(
            f"invalid input: tutorial_id: {message}", [FieldError(("tutorial_id",), message)]
        )
    return tutorial_id


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= PAGE_MAX:
        message = f"must be a whole number from 1 to {PAGE_MAX}"
        raise InvalidInput(f"invalid input: limit: {message}", [FieldError(("limit",), message)])
    return limit


def _query(value: str) -> str:
    value = normalise_text(value).strip()
    if not value:
        raise ValueError("must not be blank")
    return value


SearchQuery = Annotated[str, Field(max_length=QUERY_MAX), AfterValidator(_query)]


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    """A `TypeAdapter` built on first use, not at import (see the note on `defer_build`)."""
    return TypeAdapter(kind)


def check_query(query: str) -> str:
    """A full-text query we can send: not blank, not huge, storable text (NFC, trimmed)."""
    try:
        return str(_adapter(SearchQuery).validate_python(query))
    except ValidationError as exc:
        raise invalid_input(exc, ("q",)) from None


def check_tags(tags: Sequence[str]) -> list[str]:
    """Tag filters, normalised like stored tags (so `Python` finds `python`).

    Empty values are ignored (an empty filter box, `?tag=`), on every face.
    """
    try:
        return list(_adapter(Tags).validate_python([tag for tag in tags if tag != ""]))
    except ValidationError as exc:
        raise invalid_input(exc, ("tag",)) from None
