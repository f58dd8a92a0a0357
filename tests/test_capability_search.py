"""The CapabilityStatement lists every search parameter that works, and nothing that does not."""

from __future__ import annotations

import pytest

from fhirvault.errors import Invalid
from fhirvault.fhir.capability import search_params
from fhirvault.fhir.r4 import resource_types
from fhirvault.service.search_parse import parse_search
from tests.support.server import FhirApi

BASE = "http://fhirvault.invalid/fhir/R4"
SPECIAL_VALUES = {"_content": "word", "_text": "word", "_list": "List/1", "_filter": "_id eq 1", "near": "0|0|1"}


def probe(name: str, kind: str) -> tuple[str, str]:
    """A query parameter that uses `name` and that every parameter of its type accepts."""
    if name in SPECIAL_VALUES:
        return name, SPECIAL_VALUES[name]
    return f"{name}:missing", "false"


def test_every_listed_parameter_is_understood_and_nothing_unlisted_is() -> None:
    for rtype in resource_types():
        listed = search_params(rtype)
        names = {p["name"] for p in listed}
        for p in listed:
            parse_search([rtype], [probe(p["name"], p["type"])], BASE, strict=True)  # raises if unknown
        for absent in ("_query", "_nonsense"):
            assert absent not in names
            with pytest.raises(Invalid):
                parse_search([rtype], [(absent, "x")], BASE, strict=True)
    assert "near" in {p["name"] for p in search_params("Location")}
    assert "_text" not in {p["name"] for p in search_params("Binary")}
    assert {"chromosome-variant-coordinate", "referenceseqid-window-coordinate"} <= {
        p["name"] for p in search_params("MolecularSequence")}


@pytest.mark.parametrize("rtype", ["Observation", "Location", "Binary", "MolecularSequence", "DocumentReference"])
def test_listed_parameters_are_accepted_by_a_strict_server(api: FhirApi, rtype: str) -> None:
    statement = api.get("/metadata").json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == rtype)
    assert "*" in entry["searchRevInclude"] and "*" in entry["searchInclude"]
    for p in entry["searchParam"]:
        name, value = probe(p["name"], p["type"])
        r = api.get(f"/{rtype}", params={name: value, "_count": 0}, headers={"Prefer": "handling=strict"})
        assert r.status_code == 200, (rtype, p["name"], r.text)


def test_the_common_special_parameters_are_documented_once(api: FhirApi) -> None:
    """`_content`, `_text`, `_list` and `_filter` are listed on every type (name, type, definition) and
    documented once in `rest.searchParam`, which applies to every type and to system search."""
    rest = api.get("/metadata").json()["rest"][0]
    common = {p["name"]: p for p in rest["searchParam"]}
    assert set(common) == {"_content", "_text", "_list", "_filter"}
    assert all(p["documentation"] for p in common.values())
    for entry in rest["resource"]:
        special = [p for p in entry["searchParam"] if p["name"] in common]
        assert {p["name"] for p in special} >= {"_content", "_list", "_filter"}, entry["type"]
        assert not any("documentation" in p for p in special), entry["type"]
