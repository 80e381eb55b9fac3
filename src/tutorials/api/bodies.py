"""Request bodies and query values on the wire: what the OpenAPI document promises, enforced.

The domain models (`tutorials.schemas`) decide what can be stored; their JSON schema is looser
than their validators (names are stripped before their length is checked, URLs are parsed,
tags must not hold control characters). The API publishes *exact* schemas instead, so that a
client (or schemathesis) can trust them both ways: every value that matches is accepted and
every value that does not is refused with 422. The patterns below are that contract; they are
checked with Python's `re` (search semantics, as JSON Schema's `pattern`), and the values then
go through the domain models, which normalise them (strip, lower-case tags, drop duplicates).

Deliberately narrower than the domain: URLs must be plain ASCII http(s) URLs with a DNS-style
host (percent-encode anything else, as RFC 3986 asks); tags are letters from a set of common
scripts, digits and ASCII punctuation other than `,` and `;`.

Bodies are parsed here too, by hand, so that duplicate keys, invalid UTF-8, NaN and absurd
nesting are refused with a clear problem instead of being silently accepted or crashing.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from starlette.exceptions import HTTPException
from starlette.requests import Request

from tutorials.api.problems import field_errors, summary
from tutorials.errors import FieldError, InvalidInput
from tutorials.schemas import (
    DESCRIPTION_MAX,
    NAME_MAX,
    TAG_MAX,
    TAGS_MAX,
    URL_MAX,
    TutorialCreate,
    TutorialPatch,
)


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _char_class(codes: Iterable[int]) -> str:
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
_WS = _char_class(WHITESPACE_CODES)
_NUL = "\\x00"

#: Stripped of surrounding whitespace: 1..255 characters, none of them NUL.
NAME_PATTERN = f"^[{_WS}]*[^{_WS}{_NUL}](?:[^{_NUL}]{{0,{NAME_MAX - 2}}}[^{_WS}{_NUL}])?[{_WS}]*$"
#: An ASCII http(s) URL with a DNS-style host, optional port, then anything printable.
URL_PATTERN = (
    "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]{1,5})?(?:[/?#][\\x21-\\x7e]*)?$"
)
#: Any text without NUL (PostgreSQL text cannot hold it).
TEXT_PATTERN = f"^[^{_NUL}]*$"

_TAG_BLOCKS = (
    range(0x21, 0x7F),  # ASCII printable, without space
    range(0xA1, 0x250),  # Latin-1 Supplement, Latin Extended-A and -B
    range(0x370, 0x400),  # Greek
    range(0x400, 0x500),  # Cyrillic
    range(0x3041, 0x3100),  # Hiragana, Katakana
    range(0x4E00, 0xA000),  # CJK Unified Ideographs
    range(0xAC00, 0xD7A4),  # Hangul syllables
)
_TAG_CODES = [
    code
    for block in _TAG_BLOCKS
    for code in block
    if chr(code) not in ",;" and unicodedata.category(chr(code))[0] not in "CZ"
]
_TAG = _char_class(_TAG_CODES)
_TAG_INNER = _char_class([*_TAG_CODES, 0x20])
#: 1..64 characters from the tag alphabet; spaces only inside.
TAG_PATTERN = f"^[{_TAG}](?:[{_TAG_INNER}]{{0,{TAG_MAX - 2}}}[{_TAG}])?$"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a published pattern with JSON Schema's meaning of a final `$` (end of text).

    Python's `$` also matches before a trailing newline; ECMAScript's (JSON Schema's) does not.
    """
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


def _matching(pattern: str, message: str) -> AfterValidator:
    compiled = compile_pattern(pattern)

    def check(value: str) -> str:
        if not compiled.search(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def _published(max_length: int, pattern: str) -> Any:
    return Field(max_length=max_length, json_schema_extra={"pattern": pattern})


_WIRE = ConfigDict(extra="forbid")

WireName = Annotated[
    str,
    _published(NAME_MAX * 4, NAME_PATTERN),
    _matching(NAME_PATTERN, f"must have 1 to {NAME_MAX} characters once trimmed, and no NUL"),
]
WireUrl = Annotated[
    str,
    _published(URL_MAX, URL_PATTERN),
    _matching(URL_PATTERN, "must be an ASCII http or https URL with a host name"),
]
WireDescription = Annotated[
    str, _published(DESCRIPTION_MAX, TEXT_PATTERN), _matching(TEXT_PATTERN, "must not contain NUL")
]
WireTag = Annotated[
    str,
    _published(TAG_MAX, TAG_PATTERN),
    _matching(
        TAG_PATTERN,
        "must be letters, digits or punctuation other than ',' and ';' (spaces only inside)",
    ),
]
WireTags = Annotated[list[WireTag], Field(max_length=TAGS_MAX)]


class TutorialCreateBody(BaseModel):
    """A new tutorial: `name` is required; `tags` are stored lower-case, without duplicates."""

    model_config = ConfigDict(**_WIRE, title="TutorialCreate")

    name: WireName
    url: WireUrl | None = None
    description: WireDescription | None = None
    tags: WireTags = Field(default_factory=list)


def _name_not_nullable(schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    name = properties.get("name", {})
    for option in name.pop("anyOf", []):
        if option.get("type") == "string":
            name.update(option)
    name.pop("default", None)


class TutorialPatchBody(BaseModel):
    """JSON merge patch: absent = unchanged, null = cleared (`name` cannot be cleared)."""

    model_config = ConfigDict(**_WIRE, title="TutorialPatch", json_schema_extra=_name_not_nullable)

    name: WireName | None = None
    url: WireUrl | None = None
    description: WireDescription | None = None
    tags: WireTags | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name_cannot_be_cleared(cls, value: object) -> object:
        if value is None:
            raise ValueError("name cannot be null (it is required)")
        return value


JSON_TYPES = frozenset({"application/json"})
MERGE_PATCH_TYPES = frozenset({"application/merge-patch+json", "application/json"})


def require_media_type(request: Request, accepted: frozenset[str], accept_header: str) -> None:
    """415 unless the body is declared as one of `accepted` (UTF-8, the only JSON charset)."""
    declared = request.headers.get("content-type", "")
    media_type, _, params = declared.partition(";")
    media_type = media_type.strip().lower()
    charset = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media_type not in accepted or charset not in ("", "utf-8", "utf8"):
        raise HTTPException(
            415,
            f"send the body as {' or '.join(sorted(accepted))} (UTF-8), "
            f"not {media_type or 'no Content-Type'}",
            headers={accept_header: ", ".join(sorted(accepted))},
        )


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: Request) -> object:
    """The body as JSON. 400 when it is not JSON at all, 422 when it has duplicate keys."""
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(400, "the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(
            400, f"the request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        message = f"duplicate key {exc.key!r} in the JSON object"
        raise InvalidInput(message, [FieldError(("body",), message)]) from None
    except RecursionError:
        raise HTTPException(400, "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise HTTPException(400, f"the request body is not valid JSON: {exc}") from None


def _invalid(exc: ValidationError) -> InvalidInput:
    errors = field_errors(
        {"loc": ("body", *error["loc"]), "msg": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )
    return InvalidInput(summary(errors), errors)


def parse_create(data: object) -> TutorialCreate:
    """Validate a POST body against the published schema, then the domain's rules."""
    try:
        body = TutorialCreateBody.model_validate(data)
        return TutorialCreate.model_validate(body.model_dump(exclude_unset=True))
    except ValidationError as exc:
        raise _invalid(exc) from None


def parse_patch(data: object) -> dict[str, object]:
    """Validate a merge patch; the changes it asks for (null = clear)."""
    try:
        body = TutorialPatchBody.model_validate(data)
        patch = TutorialPatch.model_validate(body.model_dump(exclude_unset=True))
    except ValidationError as exc:
        raise _invalid(exc) from None
    return patch.changes()
