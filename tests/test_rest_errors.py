"""Bad input is a 4xx OperationOutcome that names the problem, and changes nothing."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import httpx
import pytest

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}


def outcome_text(r: httpx.Response) -> str:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/Patient", b"{not json", 400, "not valid JSON"),
        ("/Patient", b"[1, 2]", 400, "JSON object"),
        ("/Patient", b'{"resourceType": "Spaceship"}', 400, "Spaceship"),
        ("/Patient", b'{"resourceType": "Observation"}', 400, "does not match"),
        ("/Patient", b'{"active": true}', 400, "resourceType"),
        ("/Patient", b"", 400, "empty"),
        # a lone surrogate escape is no Unicode character; it used to be 500 and a dropped connection
        ("/Patient", rb'{"resourceType": "Patient", "name": [{"family": "\ud800"}]}', 400, "surrogate"),
        ("/Patient", rb'{"resourceType": "Patient", "\uDC00": 1}', 400, "surrogate"),
        ("/Binary", rb'{"resourceType": "Binary", "contentType": "text/plain", "id": "\udfff"}', 400, "surrogate"),
        ("/Spaceship", b'{"resourceType": "Patient"}', 404, "Spaceship"),
    ],
)
def test_bad_create(api: FhirApi, path: str, body: bytes, status: int, needle: str) -> None:
    r = api.post(path, content=body, headers=FHIR)
    assert r.status_code == status
    assert needle in outcome_text(r)


def test_bad_update(api: FhirApi) -> None:
    pid = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
    r = api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": "other"}, headers=FHIR)
    assert r.status_code == 400 and "does not match" in outcome_text(r)
    r = api.put("/Patient/bad_id!", json={"resourceType": "Patient", "id": "bad_id!"}, headers=FHIR)
    assert r.status_code == 400 and "valid resource id" in outcome_text(r)
    r = api.put(f"/Patient/{pid}", json={"resourceType": "Patient"}, headers=FHIR)
    assert r.status_code == 400
    assert api.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_unsupported_media_type(api: FhirApi) -> None:
    r = api.post("/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415 and "application/fhir+xml" in outcome_text(r)


def test_wrong_method_and_unknown_endpoint(api: FhirApi) -> None:
    r = api.request("POST", "/Patient/abc")
    assert r.status_code == 405 and "POST" in outcome_text(r)
    r = api.get("/Patient/abc/whatever/else/here", headers={"Accept": "text/html"})
    assert r.status_code == 404 and outcome_text(r)


def test_missing_resource_is_404_outcome_for_any_accept(api: FhirApi) -> None:
    r = api.get("/Patient/does-not-exist", headers={"Accept": "text/html"})
    assert r.status_code == 404 and "Patient/does-not-exist" in outcome_text(r)


@pytest.mark.parametrize(
    "query", ["_lastUpdated=yesterday", "_count=many", "_id=bad_id!", "_sort=name", "patient=not a ref"]
)
def test_malformed_search_values(api: FhirApi, query: str) -> None:
    r = api.get(f"/Observation?{query}")
    assert r.status_code == 400, r.text
    assert outcome_text(r)


def test_unknown_search_parameter_lenient_and_strict(api: FhirApi) -> None:
    r = api.get("/Patient?frobnicate=1")
    assert r.status_code == 200
    outcomes = [e for e in r.json().get("entry", []) if e["search"]["mode"] == "outcome"]
    assert "frobnicate" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    r = api.get("/Patient?frobnicate=1", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and "frobnicate" in outcome_text(r)


def test_invalid_if_match(api: FhirApi) -> None:
    pid = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
    r = api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                headers={**FHIR, "If-Match": "garbage"})
    assert r.status_code == 400


def test_a_url_id_that_is_no_id_is_404_or_400_on_every_instance_path(api: FhirApi) -> None:
    """A NUL byte (or any character R4 ids do not allow) where the id goes: 404 for what reads or changes
    an instance, 400 for PUT. On PostgreSQL the NUL used to reach the query and answer 500."""
    for rid in ("x%00", "%00", "a%20b", "%C3%A9"):
        for method, path in [("GET", f"/Patient/{rid}"), ("DELETE", f"/Patient/{rid}"),
                             ("GET", f"/Patient/{rid}/_history"), ("GET", f"/Patient/{rid}/_history/1"),
                             ("GET", f"/Binary/{rid}"),
                             ("GET", f"/Patient/{rid}/$validate"), ("GET", f"/Patient/{rid}/$ingestion-status"),
                             ("GET", f"/Patient/{rid}/$binary-access-read?path=Patient.photo")]:
            r = api.request(method, path)
            assert r.status_code == 404 and "is not a resource id" in outcome_text(r), (method, path, r.text)
        r = api.patch(f"/Patient/{rid}", content=b"[]", headers={"Content-Type": "application/json-patch+json"})
        assert r.status_code == 404, r.text
        r = api.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": "x"}, headers=FHIR)
        assert r.status_code == 400 and "not a valid resource id" in outcome_text(r), r.text
        r = api.put(f"/Binary/{rid}", content=b"bytes", headers={"Content-Type": "text/plain"})
        assert r.status_code == 400, r.text


def test_nul_characters_are_400_and_change_nothing(api: FhirApi) -> None:
    """U+0000 in a JSON body, a query, conditional criteria or a Bundle entry's url: 400 (or 404 for an id
    in a batch entry). PostgreSQL refuses NUL in text, so these used to answer 500 and drop the connection."""
    before = api.get("/Patient", params={"_summary": "count"}).json()["total"]
    patient = rb'{"resourceType": "Patient", "identifier": [{"system": "urn:nul", "value": "a\u0000b"}]}'
    assert api.post("/Patient", content=patient, headers=FHIR).status_code == 400
    for params in ({"identifier": "\x00"}, {"identifier": "urn:nul|a\x00b"}, {"_id": "a", "_filename": "\x00"}):
        r = api.get("/Patient", params=params)
        assert r.status_code == 400 and "NUL" in outcome_text(r), (params, r.text)
    r = api.post("/Patient", json={"resourceType": "Patient"}, headers={**FHIR, "If-None-Exist": "identifier=a%00"})
    assert r.status_code == 400, r.text
    for path in ("/Patient/_search", "/_search"):
        r = api.post(path, content=b"_type=Patient&identifier=a%00",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and "NUL" in outcome_text(r), (path, r.text)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/x%00"}},
        {"request": {"method": "GET", "url": "Patient?identifier=a%00"}},
        {"request": {"method": "DELETE", "url": "Patient/x%00"}},
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a%00"},
         "resource": {"resourceType": "Patient"}}]}
    r = api.post("", json=batch, headers=FHIR)
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["404", "400", "404", "400"], r.text
    assert api.get("/Patient", params={"_summary": "count"}).json()["total"] == before


def test_a_type_of_a_later_release_is_no_resource_type_here(api: FhirApi) -> None:
    """SubscriptionStatus (R4B and R5) is not an R4 type: the CapabilityStatement does not list it and its
    endpoints answer as for any unknown type. It was listed with every interaction (an invalid statement:
    `rest.resource.type` is bound to R4's resource types) and its search answered an empty page."""
    statement = api.get("/metadata").json()
    assert "SubscriptionStatus" not in {r["type"] for r in statement["rest"][0]["resource"]}
    for path in ("/SubscriptionStatus", "/SubscriptionStatus/_history", "/SubscriptionStatus/x"):
        r = api.get(path)
        assert r.status_code in (400, 404) and r.json()["resourceType"] == "OperationOutcome", (path, r.text)
        assert "SubscriptionStatus" in outcome_text(r)
    r = api.post("/CapabilityStatement/$validate", json=statement, headers=FHIR)
    assert r.status_code == 200, r.text
    assert not [i for i in r.json()["issue"] if i["severity"] in ("error", "fatal")], r.text


def test_a_query_or_search_form_that_is_not_utf8_is_a_400(api: FhirApi) -> None:
    """A %-escaped byte sequence that names no UTF-8 character was read as U+FFFD in a query (and the
    search answered 200 for a value never sent) and as Latin-1 in a POST _search form (`ÿþ`)."""
    family = "Ren\u00e9e" + uuid.uuid4().hex[:8]
    created = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR)
    assert created.status_code == 201
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    escaped = quote(family)
    for bad in ("%FF%FE", "%C3", "abc%E9"):
        r = api.get(f"/Patient?name={bad}")
        assert r.status_code == 400 and "UTF-8" in outcome_text(r), (bad, r.text)
        r = api.post("/Patient/_search", content=f"name={bad}".encode(), headers=form)
        assert r.status_code == 400 and "UTF-8" in outcome_text(r), (bad, r.text)
    r = api.post("/Patient/_search", content="name=Ren\u00e9e".encode("latin-1"), headers=form)
    assert r.status_code == 400 and "UTF-8" in outcome_text(r)
    # raw UTF-8 in a form body is UTF-8 too (curl --data 'name=Renée')
    r = api.post("/Patient/_search", content=f"family={family}".encode(), headers=form)
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [created.json()["id"]]
    # conditional criteria: the If-None-Exist header (raw UTF-8 was read as Latin-1 and created a duplicate)
    raw_header: dict[str, str | bytes] = {**FHIR, "If-None-Exist": f"family={family}".encode()}
    again = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=raw_header)
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"], again.text
    bad = api.post("/Patient", json={"resourceType": "Patient"}, headers={**FHIR, "If-None-Exist": "family=Zo%EBx"})
    assert bad.status_code == 400 and "UTF-8" in outcome_text(bad)
    # batch entries: the url's query and ifNoneExist
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?name%FF=x"}},
        {"request": {"method": "GET", "url": "Patient?family=Zo%EBx"}},
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "family=Zo%EBx"},
         "resource": {"resourceType": "Patient"}},
        {"request": {"method": "GET", "url": f"Patient?family={escaped}"}}]}, headers=FHIR)
    assert [e["response"]["status"].split()[0] for e in r.json()["entry"]] == ["400", "400", "400", "200"]
    assert all("UTF-8" in e["response"]["outcome"]["issue"][0]["diagnostics"] for e in r.json()["entry"][:3])
    # UTF-8, escaped in a query or a form, finds the resource
    for r in (api.get(f"/Patient?family={escaped}"),
              api.post("/Patient/_search", content=f"family={escaped}".encode(), headers=form)):
        assert r.status_code == 200 and [e["resource"]["id"] for e in r.json()["entry"]] == [created.json()["id"]]
