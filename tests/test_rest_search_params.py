"""The R4 search framework over real HTTP (SQLite and PostgreSQL): every parameter type with its
prefixes and modifiers, chains, _has, composite, :missing, OR/AND, and unknown or malformed input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def create(api: FhirApi, resource: dict) -> dict:
    r = api.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


def found(api: FhirApi, path: str, params: Any, status: int = 200) -> list[str]:
    r = api.get(path, params=params)
    assert r.status_code == status, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


def tag() -> str:
    return uuid.uuid4().hex[:12]


def obs(marker: str, **fields: Any) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "identifier": [{"system": "urn:test", "value": marker}], **fields}


def test_string_starts_with_case_and_accent_insensitive_exact_and_contains(api: FhirApi) -> None:
    t = tag()
    eve = create(api, {"resourceType": "Patient", "name": [{"family": f"Ève{t}", "given": ["Zoë"]}]})
    other = create(api, {"resourceType": "Patient", "name": [{"family": f"Adam{t}"}]})
    assert found(api, "/Patient", {"family": f"eve{t[:4]}"}) == [eve["id"]]
    assert found(api, "/Patient", {"family": f"EVE{t}"}) == [eve["id"]]
    assert found(api, "/Patient", {"name": f"ève{t}"}) == [eve["id"]]
    assert found(api, "/Patient", {"family:exact": f"Ève{t}"}) == [eve["id"]]
    assert found(api, "/Patient", {"family:exact": f"eve{t}"}) == []
    assert found(api, "/Patient", {"family:contains": t[2:9]}) == sorted([eve["id"], other["id"]])
    assert found(api, "/Patient", {"family": t}) == []  # starts-with, not contains
    # a LIKE wildcard in the value is a literal character
    assert found(api, "/Patient", {"family": f"%{t}"}) == []


def test_token_forms_and_modifiers(api: FhirApi) -> None:
    t = tag()
    a = create(api, obs(t, code={"coding": [{"system": LOINC, "code": f"A{t}", "display": "Glucose"}],
                                 "text": "Blood sugar"}))
    b = create(api, obs(t, code={"coding": [{"code": f"A{t}"}]}))
    c = create(api, obs(t, code={"coding": [{"system": "urn:other", "code": f"C{t}"}]}))
    q = {"identifier": f"urn:test|{t}"}
    assert found(api, "/Observation", {**q, "code": f"A{t}"}) == sorted([a["id"], b["id"]])
    assert found(api, "/Observation", {**q, "code": f"{LOINC}|A{t}"}) == [a["id"]]
    assert found(api, "/Observation", {**q, "code": f"|A{t}"}) == [b["id"]]
    assert found(api, "/Observation", {**q, "code": "urn:other|"}) == [c["id"]]
    assert found(api, "/Observation", {**q, "code:not": f"A{t}"}) == [c["id"]]
    assert found(api, "/Observation", {**q, "code:text": "blood"}) == [a["id"]]
    assert found(api, "/Observation", {**q, "code:text": "gluc"}) == [a["id"]]
    assert found(api, "/Observation", {**q, "status": "final"}) == sorted([a["id"], b["id"], c["id"]])
    p = create(api, {"resourceType": "Patient", "identifier": [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
         "system": "urn:mrn", "value": f"M{t}"}], "active": True})
    assert found(api, "/Patient", {"identifier:of-type": f"http://terminology.hl7.org/CodeSystem/v2-0203|MR|M{t}"}) \
        == [p["id"]]
    assert found(api, "/Patient", {"identifier:of-type": f"http://terminology.hl7.org/CodeSystem/v2-0203|XX|M{t}"}) \
        == []
    assert found(api, "/Patient", {"identifier": f"M{t}", "active": "true"}) == [p["id"]]
    assert found(api, "/Patient", {"identifier": f"M{t}", "active": "false"}) == []


def test_date_prefixes_compare_ranges_at_their_precision(api: FhirApi) -> None:
    t = tag()
    day = create(api, obs(t, effectiveDateTime="2025-03-04T10:00:00Z"))
    period = create(api, obs(t, effectivePeriod={"start": "2025-01-10", "end": "2025-06-20"}))
    old = create(api, obs(t, effectiveDateTime="2024-12-31"))
    q = {"identifier": f"urn:test|{t}"}

    def d(value: str) -> list[str]:
        return found(api, "/Observation", {**q, "date": value})

    assert d("2025") == sorted([day["id"], period["id"]])
    assert d("2025-03") == [day["id"]]
    assert d("2025-03-04") == [day["id"]]
    assert d("2025-03-04T10:00:00Z") == [day["id"]]
    assert d("eq2025-03-04T11:00:00+01:00") == [day["id"]]
    assert d("ne2025") == [old["id"]]
    assert d("lt2025-01-01") == [old["id"]]
    assert d("gt2025-03-31") == [period["id"]]  # the period goes on after March
    assert d("ge2025-03-04") == sorted([day["id"], period["id"]])
    assert d("le2025-01-10") == sorted([old["id"], period["id"]])
    assert d("sa2025-01-01") == sorted([day["id"], period["id"]])
    assert d("eb2025-01-01") == [old["id"]]
    assert d("eb2025-06-21") == sorted([old["id"], day["id"], period["id"]])
    assert day["id"] in d("ap2025-03-04")
    assert found(api, "/Observation", [*q.items(), ("date", "ge2025-01-01"), ("date", "lt2025-04-01")]) \
        == sorted([day["id"], period["id"]])  # repeated parameter: AND
    assert found(api, "/Observation", [*q.items(), ("date", "ge2025-01-01"), ("date", "eb2025-05-01")]) \
        == [day["id"]]
    assert d("2024,2025-03") == sorted([old["id"], day["id"]])  # comma: OR


def test_dates_in_the_last_year_of_the_calendar_are_found(api: FhirApi) -> None:
    """A date in 9999 ends at the first instant of year 10000, past the end of Python's calendar: such
    values were indexed as missing (never found, sorted as absent) and searching with them was a 400."""
    t = tag()
    ids = {v: create(api, obs(t, effectiveDateTime=v))["id"]
           for v in ("9999", "9999-12-31", "9999-12-31T23:59:59Z", "2030-01-01")}
    mine = {"identifier": f"urn:test|{t}"}
    assert found(api, "/Observation", {**mine, "date": "gt2031"}) == sorted(
        ids[v] for v in ("9999", "9999-12-31", "9999-12-31T23:59:59Z"))
    # eq: the search value's range (the whole year) holds each of the three (R4 3.1.1.4.2)
    assert found(api, "/Observation", {**mine, "date": "9999"}) == sorted(
        ids[v] for v in ("9999", "9999-12-31", "9999-12-31T23:59:59Z"))
    assert found(api, "/Observation", {**mine, "date": "9999-12-31"}) == sorted(
        ids[v] for v in ("9999-12-31", "9999-12-31T23:59:59Z"))
    assert found(api, "/Observation", {**mine, "date:missing": "true"}) == []
    page = api.get("/Observation", params={**mine, "_sort": "-date"}).json()
    assert [e["resource"]["id"] for e in page["entry"]][-1] == ids["2030-01-01"]
    born = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": t}],
                        "birthDate": "9999-12-31"})
    assert found(api, "/Patient", {**mine, "birthdate": "gt2030"}) == [born["id"]]


def test_quantity_and_number_prefixes(api: FhirApi) -> None:
    t = tag()
    small = create(api, obs(t, code={"coding": [{"system": LOINC, "code": "2339-0"}]},
                            valueQuantity={"value": 5.4, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}))
    big = create(api, obs(t, valueQuantity={"value": 100, "unit": "mg", "system": UCUM, "code": "mg"}))
    q = {"identifier": f"urn:test|{t}"}

    def v(value: str) -> list[str]:
        return found(api, "/Observation", {**q, "value-quantity": value})

    assert v("5.4") == [small["id"]]
    assert v("5.40") == [small["id"]]
    assert v("5") == [small["id"]]  # 5 means [4.5, 5.5)
    assert v("6") == []
    assert v("gt5.4") == [big["id"]]
    assert v("ge5.4") == sorted([small["id"], big["id"]])
    assert v("lt100") == [small["id"]]
    assert v("le100") == sorted([small["id"], big["id"]])
    assert v("ne5.4") == [big["id"]]
    assert v("ap95") == [big["id"]]
    assert v(f"5.4|{UCUM}|mmol/L") == [small["id"]]
    assert v("5.4||mmol/L") == [small["id"]]
    assert v(f"5.4|{UCUM}|mg") == []
    assert v("gt1|urn:nothing|mg") == []
    assert found(api, "/Observation", {**q, "code-value-quantity": f"{LOINC}|2339-0$gt5"}) == [small["id"]]
    assert found(api, "/Observation", {**q, "code-value-quantity": f"{LOINC}|2339-0$lt5"}) == []
    risk_a = create(api, {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/x"},
                          "identifier": [{"system": "urn:test", "value": t}],
                          "prediction": [{"probabilityDecimal": 0.25}]})
    create(api, {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/x"},
                 "identifier": [{"system": "urn:test", "value": t}], "prediction": [{"probabilityDecimal": 0.8}]})
    assert found(api, "/RiskAssessment", {**q, "probability": "lt0.5"}) == [risk_a["id"]]
    assert found(api, "/RiskAssessment", {**q, "probability": "0.25"}) == [risk_a["id"]]
    # sa / eb: outside the search value's range at its precision, not merely above or below the value
    risk_b = found(api, "/RiskAssessment", {**q, "probability": "0.8"})
    assert found(api, "/RiskAssessment", {**q, "probability": "sa0.25"}) == risk_b
    assert found(api, "/RiskAssessment", {**q, "probability": "sa0.2"}) == sorted([risk_a["id"], *risk_b])
    assert found(api, "/RiskAssessment", {**q, "probability": "eb0.25"}) == []
    assert found(api, "/RiskAssessment", {**q, "probability": "eb0.8"}) == [risk_a["id"]]
    assert v("sa5") == [big["id"]] and v("eb5.4") == [] and v("eb100") == [small["id"]]


def test_number_edges_zero_and_more_digits_than_a_double(api: FhirApi) -> None:
    t = tag()
    zero = create(api, obs(t, valueQuantity={"value": 0, "system": UCUM, "code": "1"}))
    huge = create(api, obs(t, valueQuantity={"value": 12345678901234567890, "system": UCUM, "code": "1"}))
    q = {"identifier": f"urn:test|{t}"}

    def v(value: str) -> list[str]:
        return found(api, "/Observation", {**q, "value-quantity": value})

    assert v("0") == [zero["id"]] and v("ap0") == [zero["id"]]  # ap is never narrower than eq
    assert v("12345678901234567890") == [huge["id"]]  # its range rounds to one double, which must still match
    assert v("ne12345678901234567890") == [zero["id"]]


def test_references_chains_and_has(api: FhirApi) -> None:
    t = tag()
    org = create(api, {"resourceType": "Organization", "name": f"Clinic{t}"})
    pat = create(api, {"resourceType": "Patient", "name": [{"family": f"Chain{t}"}],
                       "managingOrganization": {"reference": f"Organization/{org['id']}"}})
    other = create(api, {"resourceType": "Patient", "name": [{"family": f"Other{t}"}]})
    o1 = create(api, obs(t, subject={"reference": f"Patient/{pat['id']}"},
                         code={"coding": [{"system": LOINC, "code": f"H{t}"}]}))
    create(api, obs(t, subject={"reference": f"Patient/{other['id']}"}))
    o3 = create(api, obs(t, subject={"identifier": {"system": "urn:ssn", "value": f"S{t}"}}))
    q = {"identifier": f"urn:test|{t}"}
    assert found(api, "/Observation", {**q, "subject": f"Patient/{pat['id']}"}) == [o1["id"]]
    assert found(api, "/Observation", {**q, "subject:Patient": pat["id"]}) == [o1["id"]]
    assert found(api, "/Observation", {**q, "patient": f"{api.base}/Patient/{pat['id']}"}) == [o1["id"]]
    assert found(api, "/Observation", {**q, "subject:identifier": f"urn:ssn|S{t}"}) == [o3["id"]]
    assert found(api, "/Observation", {**q, "subject:Patient.name": f"chain{t}"}) == [o1["id"]]
    assert found(api, "/Observation", {**q, "patient.family": f"Chain{t}"}) == [o1["id"]]
    assert found(api, "/Observation", {**q, "patient.organization.name": f"clinic{t}"}) == [o1["id"]]
    assert found(api, "/Observation", {**q, "patient.organization.name": f"nowhere{t}"}) == []
    assert found(api, "/Patient", {"_has:Observation:patient:code": f"H{t}"}) == [pat["id"]]
    assert found(api, "/Organization", {"_has:Patient:organization:_has:Observation:patient:code": f"H{t}"}) \
        == [org["id"]]


def test_uri_missing_and_system_parameters(api: FhirApi) -> None:
    t = tag()
    vs = create(api, {"resourceType": "ValueSet", "status": "active", "url": f"http://example.org/{t}/fhir/ValueSet/a"})
    assert found(api, "/ValueSet", {"url": f"http://example.org/{t}/fhir/ValueSet/a"}) == [vs["id"]]
    assert found(api, "/ValueSet", {"url:below": f"http://example.org/{t}/fhir"}) == [vs["id"]]
    assert found(api, "/ValueSet", {"url:above": f"http://example.org/{t}/fhir/ValueSet/a/b"}) == [vs["id"]]
    assert found(api, "/ValueSet", {"url:below": f"http://example.org/{t}/other"}) == []
    upper = create(api, {"resourceType": "ValueSet", "status": "active", "url": f"http://example.org/{t}/FHIR/ValueSet/b"})
    # uris match case-sensitively, :below too (SQLite's LIKE alone would ignore the case)
    assert found(api, "/ValueSet", {"url:below": f"http://example.org/{t}/fhir"}) == [vs["id"]]
    assert found(api, "/ValueSet", {"url:below": f"http://example.org/{t}/FHIR"}) == [upper["id"]]
    with_value = create(api, obs(t, valueString="v", meta={"tag": [{"system": "urn:tags", "code": t}],
                                                             "profile": [f"http://example.org/{t}/profile"],
                                                             "source": f"urn:source:{t}"}))
    without = create(api, obs(t))
    q = {"identifier": f"urn:test|{t}"}
    assert found(api, "/Observation", {**q, "value-string:missing": "true"}) == [without["id"]]
    assert found(api, "/Observation", {**q, "value-string:missing": "false"}) == [with_value["id"]]
    assert found(api, "/Observation", {"_tag": f"urn:tags|{t}"}) == [with_value["id"]]
    assert found(api, "/Observation", {"_profile": f"http://example.org/{t}/profile"}) == [with_value["id"]]
    assert found(api, "/Observation", {"_source": f"urn:source:{t}"}) == [with_value["id"]]
    assert found(api, "/Observation", {**q, "_id": f"{without['id']},{with_value['id']}"}) \
        == sorted([with_value["id"], without["id"]])


def test_unknown_parameters_lenient_and_strict_and_malformed_values(api: FhirApi) -> None:
    t = tag()
    p = create(api, {"resourceType": "Patient", "name": [{"family": f"Lenient{t}"}]})
    r = api.get("/Patient", params={"family": f"Lenient{t}", "nonsense": "1"})
    assert r.status_code == 200
    bundle = r.json()
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == [p["id"]]
    outcomes = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcomes and "nonsense" in outcomes[0]["issue"][0]["diagnostics"]
    assert outcomes[0]["issue"][0]["severity"] == "warning"
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "nonsense" not in self_link and f"Lenient{t}" in self_link
    strict = api.get("/Patient", params={"family": "x", "nonsense": "1"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "nonsense" in strict.text
    for params, words in (
        ({"birthdate": "2025-13-45"}, ["birthdate", "2025-13-45"]),
        ({"birthdate": "xx2025"}, ["birthdate", "xx2025"]),
        ({"family:sounds-like": "x"}, ["family", "sounds-like"]),
        ({"_count": "many"}, ["_count", "many"]),
        ({"_sort": "nonsense"}, ["nonsense"]),
        ({"_summary": "maybe"}, ["_summary", "maybe"]),
        ({"general-practitioner": "not a ref"}, ["general-practitioner", "not a ref"]),
        ({"_has:Observation:patient": "x"}, ["_has"]),
        ({"_include": "Patient:nothing"}, ["_include", "Patient:nothing"]),
        ({"family": ",".join(["a"] * 101)}, ["family"]),
        ({"gender:": "male"}, ["gender:", "empty modifier"]),
        ({"name:": "Pat"}, ["name:", "empty modifier"]),
    ):
        r = api.get("/Patient", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
        for w in words:
            assert w in r.text, (params, w, r.text)
    assert api.get("/Observation", params={"value-quantity": "abc"}).status_code == 400
    assert api.get("/Observation", params={"code-value-quantity": "a|b"}).status_code == 400
    # numbers beyond a double, and spellings Python's Decimal takes but a FHIR number is not
    for value in ("1e400", "1e99999", "\uff11", "Infinity", "NaN", "1_000", "gt1e400"):
        for path, name in (("/RiskAssessment", "probability"), ("/Observation", "value-quantity")):
            r = api.get(path, params={name: value})
            assert r.status_code == 400 and name in r.text, (name, value, r.text)
    assert api.get("/RiskAssessment", params={"probability": "1e2"}).status_code == 200
    assert api.get("/RiskAssessment", params={"probability": "-.5"}).status_code == 200
    # an empty type in _type names none; on a type's search, _type may only name that type
    for value in ("", "Patient,,Observation", "Patient,"):
        r = api.get("", params={"_type": value})
        assert r.status_code == 400 and "_type" in r.text, (value, r.text)
    for value in ("", "Observation", "Patient,Observation", "Bogus"):
        r = api.get("/Patient", params={"_type": value})
        assert r.status_code == 400 and "_type" in r.text, (value, r.text)
    assert api.get("/Patient", params={"_type": "Patient", "_id": "x"}).status_code == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_post_search_and_system_search(api: FhirApi, method: str) -> None:
    t = tag()
    p = create(api, {"resourceType": "Patient", "meta": {"tag": [{"system": "urn:sys", "code": t}]}})
    o = create(api, obs(t, meta={"tag": [{"system": "urn:sys", "code": t}]}))
    if method == "GET":
        r = api.get("/", params={"_type": "Patient,Observation", "_tag": f"urn:sys|{t}"})
        assert r.status_code == 200, r.text
        assert sorted(e["resource"]["id"] for e in r.json()["entry"]) == sorted([p["id"], o["id"]])
        only = api.get("", params={"_type": "Patient", "_tag": f"urn:sys|{t}"}).json()
        assert [e["resource"]["id"] for e in only["entry"]] == [p["id"]]
        everywhere = api.get("", params={"_tag": f"urn:sys|{t}"}).json()
        assert sorted(e["resource"]["id"] for e in everywhere["entry"]) == sorted([p["id"], o["id"]])
        assert api.get("", params={"_type": "Nope"}).status_code == 400
    else:
        r = api.post("/_search", data={"_type": "Observation", "_tag": f"urn:sys|{t}"})
        assert r.status_code == 200, r.text
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [o["id"]]
        r = api.post("/Observation/_search", data={"identifier": f"urn:test|{t}"}, params={"status": "final"})
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [o["id"]]
