"""SMART scope parsing (v2 letters, v1 suffixes) and narrowing coverage."""

from __future__ import annotations

import pytest

from fhirvault.security.scopes import ScopeError, ScopeSet, parse_scope


@pytest.mark.parametrize("text, letters", [
    ("system/Patient.rs", "rs"), ("system/*.cruds", "cruds"), ("patient/*.rs", "rs"), ("system/Binary.c", "c"),
    ("system/*.read", "rs"), ("patient/Observation.write", "cud"), ("system/*.*", "cruds"),
])
def test_parse(text: str, letters: str) -> None:
    assert parse_scope(text).letters == letters


@pytest.mark.parametrize("text", ["system/Patient.sr", "system/Patient.rr", "system/Patient.", "user/*.rs",
                                  "system/patient.rs", "system/Foo.rs", "openid", "system/*.rs?x=1", ""])
def test_reject(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_allows_and_covers() -> None:
    held = ScopeSet.parse("system/Patient.cruds system/*.rs")
    assert held.allows("u", "Patient") and not held.allows("u", "Observation") and held.allows("s", None)
    assert held.covers(parse_scope("system/Observation.read"))
    assert held.covers(parse_scope("system/Patient.cu"))
    assert not held.covers(parse_scope("system/*.cruds"))
    assert not held.covers(parse_scope("patient/Patient.r"))
