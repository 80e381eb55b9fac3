"""Parsing If-Match / If-None-Match: lists, `*`, weak tags, bare tags, and malformed values."""

from __future__ import annotations

import pytest

from tutorials.api.etags import EntityTags, etag, parse


def test_the_etag_of_a_version_is_strong_and_quoted() -> None:
    assert etag(3) == '"3"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"3"', EntityTags(False, frozenset({"3"}), frozenset())),
        ('W/"3"', EntityTags(False, frozenset(), frozenset({"3"}))),
        ("*", EntityTags(True, frozenset(), frozenset())),
        ('"1", W/"2" ,"3"', EntityTags(False, frozenset({"1", "3"}), frozenset({"2"}))),
        ('"a,b"', EntityTags(False, frozenset({"a,b"}), frozenset())),  # commas inside quotes
        (',, "4" ,', EntityTags(False, frozenset({"4"}), frozenset())),  # empty elements
        ("3", EntityTags(False, frozenset({"3"}), frozenset())),  # bare: read as if quoted
        ("", EntityTags(False, frozenset(), frozenset())),  # an empty list matches nothing
        ('""', EntityTags(False, frozenset({""}), frozenset())),
    ],
)
def test_entity_tag_lists_parse(value: str, expected: EntityTags) -> None:
    assert parse(value) == expected


@pytest.mark.parametrize("value", ['"3', 'W/"3', '"1" "2"', "a b", "**", '"x"y', "\x00"])
def test_malformed_values_are_refused(value: str) -> None:
    assert parse(value) is None


def test_if_match_compares_strongly_and_if_none_match_weakly() -> None:
    tags = parse('W/"2", "3"')
    assert tags is not None
    assert tags.matches_strong(3) and not tags.matches_strong(2)
    assert tags.matches_weak(2) and tags.matches_weak(3) and not tags.matches_weak(4)


def test_only_tags_that_can_be_versions_become_versions() -> None:
    tags = parse('"0", "1", "2147483647", "2147483648", "99999999999999999999", "x", "\u00b3"')
    assert tags is not None
    assert tags.versions() == {1, 2147483647}
