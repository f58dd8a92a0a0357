"""The `_filter` grammar (R4 search_filter.html): what it reads, its precedence, and what it refuses."""

from __future__ import annotations

import pytest

from fhirvault.fhir.search_filter import Comparison, FilterSyntaxError, Logical, Negation, parse_filter


def test_the_spec_examples_parse() -> None:
    assert parse_filter('name co "pet"') == Comparison("name", "co", "pet")
    assert parse_filter("given eq \"peter\" and birthdate ge 2014-10-10") == Logical(
        "and", (Comparison("given", "eq", "peter"), Comparison("birthdate", "ge", "2014-10-10")))
    assert parse_filter("code eq http://loinc.org|1234-5") == Comparison("code", "eq", "http://loinc.org|1234-5")
    assert parse_filter('subject.name co "pet"') == Comparison("subject.name", "co", "pet")


def test_and_binds_tighter_than_or_and_parentheses_and_not_group() -> None:
    a, b, c = (Comparison(x, "eq", "1") for x in "abc")
    assert parse_filter("a eq 1 or b eq 1 and c eq 1") == Logical("or", (a, Logical("and", (b, c))))
    assert parse_filter("(a eq 1 or b eq 1) and c eq 1") == Logical("and", (Logical("or", (a, b)), c))
    assert parse_filter("not (a eq 1) and b eq 1") == Logical("and", (Negation(a), b))
    assert parse_filter("a eq 1 or b eq 1 or c eq 1") == Logical("or", (a, b, c))


def test_strings_keep_spaces_quotes_and_keywords() -> None:
    assert parse_filter(r'name eq "a \"b\" and (c)"') == Comparison("name", "eq", 'a "b" and (c)')
    assert parse_filter('name eq "x,y"') == Comparison("name", "eq", "x,y")
    assert parse_filter("note co and") == Comparison("note", "co", "and")


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]),
    ("name", ["operator"]),
    ("name eq", ["value"]),
    ("name xx 1", ["'xx'", "no operator"]),
    ('name eq "open', ["closing quote"]),
    ("(name eq 1", ["')'"]),
    ("name eq 1 extra", ["'extra'"]),
    ("name eq 1 and", ["search parameter"]),
    ("not name eq 1", ["operator", "'name'"]),
    ("(" * 30 + "a eq 1" + ")" * 30, ["levels"]),
])
def test_malformed_expressions_say_what_is_wrong(text: str, words: list[str]) -> None:
    with pytest.raises(FilterSyntaxError) as err:
        parse_filter(text)
    for w in words:
        assert w in str(err.value), (text, str(err.value))


def test_a_path_with_a_filter_is_one_path() -> None:
    assert parse_filter("related[type eq has-component].target pr true") == Comparison(
        "related[type eq has-component].target", "pr", "true")
