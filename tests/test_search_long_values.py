"""Values longer than the search index keeps (a long external reference, code system, identifier, family
name, quantity unit system) are written on PostgreSQL as on SQLite, each cut to its index column's length,
and a search for the whole value finds the resource: over real HTTP, on both databases."""

from __future__ import annotations

import uuid

from tests.support.searching import FHIR, create, found
from tests.support.server import FhirApi


def test_long_values_are_stored_and_found(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:12]
    long_system = "http://example.org/" + "s" * 600
    long_value = "v" * 700
    family = "Z" + "a" * 300
    far = "http://other.example/" + "a" * 200 + "/Patient/1"
    unit_system = "http://units.example/" + "u" * 300
    p = create(api, {"resourceType": "Patient", "name": [{"family": family}],
                     "identifier": [{"system": "urn:tt", "value": t}, {"system": long_system, "value": long_value}],
                     "meta": {"tag": [{"system": long_system, "code": "x"}]}})
    o = create(api, {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": long_system,
                                                                                          "code": long_value}]},
                     "identifier": [{"system": "urn:tt", "value": t}], "subject": {"reference": far},
                     "valueQuantity": {"value": 5, "system": unit_system, "code": "mg"}})
    mine = {"identifier": f"urn:tt|{t}"}
    assert found(api, "/Patient", {**mine, "family": family}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "family": family[:40]}) == [p["id"]]
    assert found(api, "/Patient", {"identifier": f"{long_system}|{long_value}", "_id": p["id"]}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "_tag": f"{long_system}|x"}) == [p["id"]]
    assert found(api, "/Observation", {**mine, "code": f"{long_system}|{long_value}"}) == [o["id"]]
    assert found(api, "/Observation", {**mine, "subject": far}) == [o["id"]]
    assert found(api, "/Observation", {**mine, "value-quantity": f"5|{unit_system}|mg"}) == [o["id"]]
    assert found(api, "/Observation", {**mine, "code": f"{long_system}|other"}) == []
    # a batch entry with such values is answered like any other
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": t},
            "subject": {"reference": far}}}]}, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"].startswith("201"), r.text
