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
    assert found(api, "/Patient", {**mine, "family:exact": family}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "family": family[:40]}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "family": family[:255]}) == [p["id"]]
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


def test_long_values_that_begin_alike_are_told_apart(api: FhirApi) -> None:
    """Two values alike in their first hundreds of characters are different values: a search (and so a
    conditional update or delete) for one never reaches the other. A string longer than the index compares
    is refused rather than compared on its beginning."""
    t = uuid.uuid4().hex[:12]
    long = "v" * 610
    far = "http://other.example/" + "a" * 200 + "/Patient/"
    url = "http://example.org/ValueSet/" + "u" * 700
    a = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": f"{long}A"}],
                     "name": [{"family": "Z" * 300 + t + "A"}]})
    b = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": f"{long}B"}],
                     "name": [{"family": "Z" * 300 + t + "B"}]})
    assert found(api, "/Patient", {"identifier": f"urn:tt|{long}A"}) == [a["id"]]
    assert found(api, "/Patient", {"identifier": f"urn:tt|{long}B"}) == [b["id"]]
    assert found(api, "/Patient", {"identifier": f"urn:tt|{long}C"}) == []
    assert found(api, "/Patient", {"identifier": f"urn:tt|{long[:512]}"}) == []
    assert found(api, "/Patient", {"family:exact": "Z" * 300 + t + "A"}) == [a["id"]]
    r = api.get("/Patient", params={"family": "z" * 300 + t})
    assert r.status_code == 400 and "family" in r.text and ":exact" in r.text, r.text
    # conditional interactions reach only the resource whose whole value matches
    r = api.delete("/Patient", params={"identifier": f"urn:tt|{long}C"})
    assert r.status_code in (200, 204), r.text
    assert api.get(f"/Patient/{a['id']}").status_code == 200 and api.get(f"/Patient/{b['id']}").status_code == 200
    c = {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": f"{long}C"}]}
    r = api.post("/Patient", json=c, headers={**FHIR, "If-None-Exist": f"identifier=urn:tt|{long}C"})
    assert r.status_code == 201, r.text
    # references and uris alike
    oa = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": t},
                      "subject": {"reference": far + "A"}})
    create(api, {"resourceType": "Observation", "status": "final", "code": {"text": t},
                 "subject": {"reference": far + "B"}})
    assert found(api, "/Observation", {"code:text": t, "subject": far + "A"}) == [oa["id"]]
    va = create(api, {"resourceType": "ValueSet", "status": "draft", "url": url + "A"})
    create(api, {"resourceType": "ValueSet", "status": "draft", "url": url + "B"})
    assert found(api, "/ValueSet", {"url": url + "A"}) == [va["id"]]
