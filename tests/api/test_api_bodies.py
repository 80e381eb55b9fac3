"""The published body and query patterns are exact: whatever matches is accepted by the domain
models, and they mean the same in Python and in JSON Schema (ECMAScript) regexes."""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tutorials.api.bodies import (
    NAME_PATTERN,
    TAG_PATTERN,
    URL_PATTERN,
    WHITESPACE_CODES,
    compile_pattern,
    parse_create,
    parse_patch,
)
from tutorials.errors import InvalidInput
from tutorials.schemas import TutorialCreate

FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def test_the_whitespace_class_is_exactly_what_strip_removes() -> None:
    stripped = {code for code in range(sys.maxunicode + 1) if chr(code).isspace()}
    assert set(WHITESPACE_CODES) == stripped


@FAST
@given(st.from_regex(compile_pattern(NAME_PATTERN)))
def test_every_name_the_pattern_admits_is_stored(name: str) -> None:
    assert len(name) <= 1020 or not name.strip()  # the schema's maxLength bounds the rest
    if len(name) <= 1020:
        assert TutorialCreate(name=name).name == name.strip()


@FAST
@given(st.from_regex(compile_pattern(URL_PATTERN)).filter(lambda url: len(url) <= 2048))
def test_every_url_the_pattern_admits_is_stored(url: str) -> None:
    assert TutorialCreate(name="x", url=url).url is not None


@FAST
@given(st.lists(st.from_regex(compile_pattern(TAG_PATTERN)), max_size=5))
def test_every_tag_the_pattern_admits_is_stored(tags: list[str]) -> None:
    stored = parse_create({"name": "x", "tags": tags}).tags
    assert stored == list(dict.fromkeys(tag.lower() for tag in tags))


@pytest.mark.parametrize("pattern", [NAME_PATTERN, URL_PATTERN, TAG_PATTERN])
def test_a_final_dollar_means_end_of_text_as_in_json_schema(pattern: str) -> None:
    compiled = compile_pattern(pattern)
    assert compiled.pattern.endswith(r"\Z")
    assert not compiled.search("x\n" if pattern != URL_PATTERN else "http://a\n") or (
        pattern == NAME_PATTERN  # trailing whitespace is part of a name's pattern
    )


def test_names_with_surrounding_whitespace_are_trimmed_not_refused() -> None:
    assert parse_create({"name": "\u3000 padded \n"}).name == "padded"


@pytest.mark.parametrize(
    "url",
    [" http://a.io", "http://a.io ", "https://user@a.io", "http://[::1]/", "http:///x", "mailto:a"],
)
def test_urls_outside_the_published_pattern_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_create({"name": "x", "url": url})
    assert caught.value.errors[0].loc == ("body", "url")


def test_a_patch_lists_only_what_it_changes() -> None:
    assert parse_patch({}) == {}
    assert parse_patch({"description": None, "tags": None}) == {"description": None, "tags": []}
    assert parse_patch({"name": " n "}) == {"name": "n"}
