"""Validation before the database: what every face accepts and refuses, the same way."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tutorials.errors import InvalidInput
from tutorials.schemas import (
    MAX_ID,
    NAME_MAX,
    NAME_PATTERN,
    TAG_MAX,
    TEXT_PATTERN,
    URL_MAX,
    URL_PATTERN,
    WHITESPACE_CODES,
    TutorialCreate,
    TutorialPatch,
    check_id,
    check_query,
    check_tags,
    compile_pattern,
    invalid_input,
    normalise_tag,
    tag_pattern,
)


def test_normalises_what_it_accepts() -> None:
    data = TutorialCreate(
        name="  Async SQLAlchemy ",
        url="HTTPS://Example.com/a?b=c",
        tags=["Python", " SQL ", "python"],
    )
    assert data.name == "Async SQLAlchemy"
    assert data.url == "https://example.com/a?b=c"
    assert data.tags == ["python", "sql"]


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"name": "nul\x00byte"}, "name"),
        ({"name": "lone \ud800 surrogate"}, "name"),
        ({"name": 5}, "name"),
        ({"name": "ok", "url": "ftp://example.com"}, "url"),
        ({"name": "ok", "url": "javascript:alert(1)"}, "url"),
        ({"name": "ok", "url": "https://"}, "url"),
        ({"name": "ok", "url": "https://exa mple.com"}, "url"),
        ({"name": "ok", "url": "https://e.com/" + "a" * 3000}, "url"),
        ({"name": "ok", "description": "x\x00"}, "description"),
        ({"name": "ok", "description": "x" * 20_001}, "description"),
        ({"name": "ok", "tags": [""]}, "tags"),
        ({"name": "ok", "tags": ["a;b"]}, "tags"),
        ({"name": "ok", "tags": ["x" * 65]}, "tags"),
        ({"name": "ok", "tags": [f"t{i}" for i in range(51)]}, "tags"),
        ({"name": "ok", "tags": "python"}, "tags"),
        ({"name": "ok", "version": 3}, "version"),
    ],
)
def test_refuses_bad_input_naming_the_field(fields: dict[str, object], bad_field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TutorialCreate.model_validate(fields)
    error = invalid_input(caught.value)
    assert isinstance(error, InvalidInput)
    assert error.errors
    assert error.errors[0].loc[0] == bad_field
    assert bad_field in error.detail


def test_patch_changes_follow_merge_patch() -> None:
    assert TutorialPatch.model_validate({}).changes() == {}
    assert TutorialPatch.model_validate({"url": None, "tags": None}).changes() == {
        "url": None,
        "tags": [],
    }
    with pytest.raises(InvalidInput, match="name: cannot be null"):
        TutorialPatch.model_validate({"name": None}).changes()


@pytest.mark.parametrize("bad", [0, -1, MAX_ID + 1, 2**64, True])
def test_ids_outside_bigint_are_invalid(bad: int) -> None:
    with pytest.raises(InvalidInput):
        check_id(bad)


def test_ids_inside_bigint_pass() -> None:
    assert check_id(1) == 1
    assert check_id(MAX_ID) == MAX_ID


def test_query_and_tag_filters() -> None:
    assert check_query("  async  ") == "async"
    assert check_tags(["Python"]) == ["python"]
    for bad_query in ("", "   ", "a\x00b", "q" * 1001):
        with pytest.raises(InvalidInput):
            check_query(bad_query)
    with pytest.raises(InvalidInput):
        check_tags(["bad\x00tag"])


# --- Normalisation, decided once for every face ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("HTTPS://Example.ORG:443", "https://example.org/"),
        ("http://EXAMPLE.org:80/Case?Q=1#Frag", "http://example.org/Case?Q=1#Frag"),
        ("https://example.org:8443", "https://example.org:8443/"),
        ("https://example.org/a/b/", "https://example.org/a/b/"),
        ("https://example.org?q", "https://example.org/?q"),
        ("https://xn--r8jz45g.jp/%E3%83%91", "https://xn--r8jz45g.jp/%E3%83%91"),
    ],
)
def test_urls_are_stored_as_their_identity(raw: str, stored: str) -> None:
    assert TutorialCreate(name="x", url=raw).url == stored


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@example.org/",  # credentials
        "https://example.org\\@evil.example/",  # a backslash before @
        "https://example.org/a\\b",  # backslashes anywhere
        "https://例え.jp/",  # a non-ASCII host (its xn-- form is accepted)
        "https://example.org/パス",  # a non-ASCII path (percent-encode it)
        "https://example.org:0/",
        "https://example.org:65536/",
        " https://example.org/",  # no surrounding spaces
    ],
)
def test_urls_no_face_accepts(url: str) -> None:
    with pytest.raises(ValidationError, match="must be an http or https address"):
        TutorialCreate(name="x", url=url)


def test_names_tags_and_queries_are_nfc() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert TutorialCreate(name=decomposed).name == composed
    assert TutorialCreate(name="x", tags=[decomposed.upper()]).tags == [composed]
    assert TutorialCreate(name="x", description=decomposed).description == composed
    assert check_query(decomposed) == composed
    assert check_tags([decomposed]) == [composed]


@pytest.mark.parametrize(
    ("tag", "stored"),
    [
        ("python 3", "python 3"),
        ("  Machine Learning ", "machine learning"),
        ("עברית", "עברית"),
        ("हिन्दी", "हिन्दी"),
        ("ภาษาไทย", "ภาษาไทย"),
        ("🐍", "🐍"),
        ("👩\u200d💻", "👩\u200d💻"),  # an emoji sequence keeps its joiner
        ("🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",) * 2,  # Scotland's flag
        # Unicode 15 (2022), unknown to Python 3.11's Unicode database: the same on every Python.
        ("\U0001fae8", "\U0001fae8"),
        ("\ue000", "\ue000"),  # private use (icon fonts)
        ("C++", "c++"),
    ],
)
def test_tags_of_any_script(tag: str, stored: str) -> None:
    assert TutorialCreate(name="x", tags=[tag]).tags == [stored]


@pytest.mark.parametrize(
    "tag",
    [
        "a,b", "a;b", "tab\tinside", "line\nbreak", "zero\u200bwidth", "",
        "no\u00a0break", "bidi\u202eoverride", "non\ufdd0character", "lone\ud800surrogate",
    ],
)  # fmt: skip
def test_tags_no_face_accepts(tag: str) -> None:
    with pytest.raises(ValidationError):
        TutorialCreate(name="x", tags=[tag])


def test_empty_tag_filters_are_ignored_on_every_face() -> None:
    assert check_tags(["", "Python", ""]) == ["python"]
    assert check_tags([""]) == []


# --- The published patterns say exactly what the validators do -----------------------------------

FAST = hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def test_the_whitespace_class_is_exactly_what_strip_removes() -> None:
    stripped = {code for code in range(sys.maxunicode + 1) if chr(code).isspace()}
    assert set(WHITESPACE_CODES) == stripped


@FAST
@given(st.from_regex(compile_pattern(NAME_PATTERN)))
def test_every_name_the_pattern_admits_is_stored(name: str) -> None:
    if len(name) > NAME_MAX * 4:
        return  # the schema's maxLength bounds the rest
    expected = unicodedata.normalize("NFC", name).strip()
    if len(expected) <= NAME_MAX:
        assert TutorialCreate(name=name).name == expected


@FAST
@given(st.from_regex(compile_pattern(URL_PATTERN)).filter(lambda url: len(url) <= URL_MAX))
def test_every_url_the_pattern_admits_is_stored(url: str) -> None:
    stored = TutorialCreate(name="x", url=url).url
    assert stored is not None and stored.lower().startswith(url[:4].lower())
    assert TutorialCreate(name="x", url=stored).url == stored  # the identity is a fixed point


def _tag_accepted(tag: str) -> bool:
    try:
        normalise_tag(tag)
    except ValueError:
        return False
    return True


@FAST
@given(
    st.text(
        alphabet=st.characters(codec="utf-8") | st.sampled_from(" ,;\u200d\u200b\t"), max_size=70
    )
)
def test_the_tag_pattern_and_the_tag_rule_agree(tag: str) -> None:
    admitted = compile_pattern(tag_pattern()).search(tag) is not None
    lengthened = len(unicodedata.normalize("NFC", tag.strip(" ")).lower()) > TAG_MAX
    assert _tag_accepted(tag) == (admitted and not lengthened), repr(tag)


@pytest.mark.parametrize("pattern", [NAME_PATTERN, URL_PATTERN, TEXT_PATTERN])
def test_a_final_dollar_means_end_of_text_as_in_json_schema(pattern: str) -> None:
    assert compile_pattern(pattern).pattern.endswith(r"\Z")
    assert not compile_pattern(URL_PATTERN).search("http://a\n")
