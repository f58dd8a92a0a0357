"""The FHIRPath subset used by $binary-access-read/-write."""

from __future__ import annotations

import pytest

from fhirvault.fhir.element_path import PathError, parse_element_path, resolve_first

DOC = {
    "resourceType": "DocumentReference",
    "content": [
        {"attachment": {"contentType": "text/plain", "title": "first"}},
        {"attachment": {"contentType": "image/png", "title": "second"}},
    ],
}


def test_parse_and_print() -> None:
    p = parse_element_path("DocumentReference.content[1].attachment")
    assert p.resource_type == "DocumentReference"
    assert p.element_path == "DocumentReference.content.attachment"
    assert str(p) == "DocumentReference.content[1].attachment"
    assert parse_element_path("Binary").steps == ()


@pytest.mark.parametrize("bad", ["", "Doc..content", "Doc.content[x]", "Doc.content[1", "Doc.con-tent",
                                 "Doc[0].content", "Doc.content.where(x)"])
def test_bad_paths_raise(bad: str) -> None:
    with pytest.raises(PathError):
        parse_element_path(bad)


def test_first_match_and_index() -> None:
    assert resolve_first(DOC, parse_element_path("DocumentReference.content.attachment"))["title"] == "first"
    assert resolve_first(DOC, parse_element_path("DocumentReference.content[1].attachment"))["title"] == "second"
    assert resolve_first(DOC, parse_element_path("DocumentReference.content[2].attachment")) is None
    assert resolve_first(DOC, parse_element_path("DocumentReference.subject")) is None


def test_resolved_value_is_the_stored_object() -> None:
    doc = {"resourceType": "Patient", "photo": [{"contentType": "image/jpeg"}]}
    resolve_first(doc, parse_element_path("Patient.photo[0]"))["size"] = 3
    assert doc["photo"][0]["size"] == 3
