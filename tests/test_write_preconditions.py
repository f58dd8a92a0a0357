"""Preconditions of every write over real HTTP on SQLite and PostgreSQL (RFC 9110 13.1, R4
http.html#concurrency): If-Match, If-None-Match and If-Unmodified-Since on PUT, PATCH, DELETE, their
conditional forms, $binary-access-write, Binary uploads, and Bundle entries' ifMatch / ifNoneMatch /
ifNoneExist / ifModifiedSince. A failed precondition is 412 and changes nothing."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}
MERGE = {"Content-Type": "application/merge-patch+json"}
SYSTEM = "urn:test:precondition"


def tag() -> str:
    return f"p{time.time_ns()}"


def new_patient(api: FhirApi, **extra: Any) -> dict[str, Any]:
    r = api.post("/Patient", json={"resourceType": "Patient", **extra}, headers=FHIR)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def version_of(api: FhirApi, rid: str) -> str:
    return str(api.get(f"/Patient/{rid}").json()["meta"]["versionId"])


def test_put_with_if_none_match_star_creates_only(api: FhirApi) -> None:
    p = new_patient(api)
    body = {**p, "gender": "male"}
    refused = api.put(f"/Patient/{p['id']}", json=body, headers={**FHIR, "If-None-Match": "*"})
    assert refused.status_code == 412, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert "gender" not in api.get(f"/Patient/{p['id']}").json()
    fresh = f"new-{tag()}"
    created = api.put(f"/Patient/{fresh}", json={"resourceType": "Patient", "id": fresh},
                      headers={**FHIR, "If-None-Match": "*"})
    assert created.status_code == 201, created.text
    assert api.put(f"/Patient/{fresh}", json={"resourceType": "Patient", "id": fresh},
                   headers={**FHIR, "If-None-Match": "*"}).status_code == 412


@pytest.mark.parametrize("etag", ['W/"1"', '"1"', 'W/"7", W/"1"'])
def test_if_none_match_naming_the_current_version_refuses_put_patch_delete(api: FhirApi, etag: str) -> None:
    p = new_patient(api)
    url = f"/Patient/{p['id']}"
    assert api.put(url, json={**p, "active": True}, headers={**FHIR, "If-None-Match": etag}).status_code == 412
    assert api.patch(url, json={"active": True}, headers={**MERGE, "If-None-Match": etag}).status_code == 412
    assert api.delete(url, headers={"If-None-Match": etag}).status_code == 412
    assert api.get(url).json()["meta"]["versionId"] == "1"
    # Another version named: the write goes ahead.
    ok = api.patch(url, json={"active": True}, headers={**MERGE, "If-None-Match": 'W/"9"'})
    assert ok.status_code == 200 and ok.json()["active"] is True


def test_patch_and_delete_with_if_none_match_star_on_an_existing_resource(api: FhirApi) -> None:
    p = new_patient(api)
    url = f"/Patient/{p['id']}"
    assert api.patch(url, json={"active": True}, headers={**MERGE, "If-None-Match": "*"}).status_code == 412
    assert api.delete(url, headers={"If-None-Match": "*"}).status_code == 412
    assert api.get(url).status_code == 200


def test_if_match_star_and_lists(api: FhirApi) -> None:
    p = new_patient(api)
    url = f"/Patient/{p['id']}"
    assert api.put(url, json={**p, "active": True}, headers={**FHIR, "If-Match": "*"}).status_code == 200
    assert api.patch(url, json={"active": False}, headers={**MERGE, "If-Match": 'W/"1", W/"2"'}).status_code == 200
    assert api.patch(url, json={"active": True}, headers={**MERGE, "If-Match": 'W/"1", W/"2"'}).status_code == 412
    missing = f"none-{tag()}"
    assert api.put(f"/Patient/{missing}", json={"resourceType": "Patient", "id": missing},
                   headers={**FHIR, "If-Match": "*"}).status_code == 412
    assert api.get(f"/Patient/{missing}").status_code == 404
    assert api.put(url, json=p, headers={**FHIR, "If-Match": "three"}).status_code == 400


def test_if_unmodified_since(api: FhirApi) -> None:
    p = new_patient(api)
    url = f"/Patient/{p['id']}"
    past = "Sat, 01 Jan 2000 00:00:00 GMT"
    future = "Fri, 01 Jan 2100 00:00:00 GMT"
    assert api.patch(url, json={"active": True}, headers={**MERGE, "If-Unmodified-Since": past}).status_code == 412
    assert api.patch(url, json={"active": True}, headers={**MERGE, "If-Unmodified-Since": future}).status_code == 200


def test_create_refuses_preconditions_it_cannot_have(api: FhirApi) -> None:
    """POST makes a new resource: If-Match names a version it cannot have (400, never ignored)."""
    for headers in ({"If-Match": 'W/"1"'}, {"If-None-Match": 'W/"1"'}):
        r = api.post("/Patient", json={"resourceType": "Patient"}, headers={**FHIR, **headers})
        assert r.status_code == 400, r.text
        assert "If-None-Exist" in r.json()["issue"][0]["diagnostics"]
        raw = api.post("/Binary", content=b"bytes", headers={"Content-Type": "text/plain", **headers})
        assert raw.status_code == 400, raw.text
    # If-None-Match: * is what a create does anyway.
    assert api.post("/Patient", json={"resourceType": "Patient"},
                    headers={**FHIR, "If-None-Match": "*"}).status_code == 201
    r = api.post("/Binary", content=b"bytes", headers={"Content-Type": "text/plain", "If-None-Exist": "_id=x"})
    assert r.status_code == 400 and "If-None-Exist" in r.text


def test_conditional_forms_honour_preconditions(api: FhirApi) -> None:
    v = tag()
    criteria = f"identifier={SYSTEM}|{v}"
    body = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": v}]}
    # Conditional update with no match would create: If-Match cannot hold (nothing exists).
    assert api.put(f"/Patient?{criteria}", json=body, headers={**FHIR, "If-Match": 'W/"1"'}).status_code == 412
    assert api.get("/Patient", params={"identifier": f"{SYSTEM}|{v}"}).json().get("total", 0) == 0
    created = api.put(f"/Patient?{criteria}", json=body, headers={**FHIR, "If-None-Match": "*"})
    assert created.status_code == 201
    rid = created.json()["id"]
    # One match: If-None-Match: * refuses (create only), If-Match on another version refuses.
    assert api.put(f"/Patient?{criteria}", json=body, headers={**FHIR, "If-None-Match": "*"}).status_code == 412
    assert api.put(f"/Patient?{criteria}", json=body, headers={**FHIR, "If-Match": 'W/"5"'}).status_code == 412
    assert api.patch(f"/Patient?{criteria}", json={"active": True},
                     headers={**MERGE, "If-Match": 'W/"5"'}).status_code == 412
    assert api.delete(f"/Patient?{criteria}", headers={"If-Match": 'W/"5"'}).status_code == 412
    assert api.delete(f"/Patient?{criteria}", headers={"If-None-Match": "*"}).status_code == 412
    assert version_of(api, rid) == "1"
    assert api.delete(f"/Patient?{criteria}", headers={"If-Match": 'W/"1"'}).status_code == 200
    assert api.get(f"/Patient/{rid}").status_code == 410
    # No match and If-Match: nothing to match it (412), rather than "nothing deleted".
    assert api.delete(f"/Patient?{criteria}", headers={"If-Match": 'W/"1"'}).status_code == 412


def test_binary_writes_honour_if_none_match(api: FhirApi) -> None:
    b = api.post("/Binary", content=b"first", headers={"Content-Type": "text/plain"})
    assert b.status_code == 201
    bid = b.json()["id"]
    refused = api.put(f"/Binary/{bid}", content=b"second", headers={"Content-Type": "text/plain", "If-None-Match": "*"})
    assert refused.status_code == 412
    assert api.get(f"/Binary/{bid}").content == b"first"
    doc = api.post("/DocumentReference", headers=FHIR, json={
        "resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}]}).json()
    write = f"/DocumentReference/{doc['id']}/$binary-access-write?path=DocumentReference.content[0].attachment"
    assert api.post(write, content=b"new", headers={"Content-Type": "text/plain",
                                                      "If-None-Match": 'W/"1"'}).status_code == 412
    assert api.get(f"/DocumentReference/{doc['id']}").json()["meta"]["versionId"] == "1"
    assert api.post(write, content=b"new", headers={"Content-Type": "text/plain",
                                                      "If-Match": 'W/"1"'}).status_code == 200


def transaction(api: FhirApi, entries: list[dict[str, Any]], kind: str = "transaction") -> Any:
    return api.post("/", json={"resourceType": "Bundle", "type": kind, "entry": entries}, headers=FHIR)


def test_bundle_entries_honour_if_match_and_if_none_match(api: FhirApi) -> None:
    p = new_patient(api)
    ref = f"Patient/{p['id']}"
    put = {"resource": {**p, "active": True}, "request": {"method": "PUT", "url": ref, "ifNoneMatch": "*"}}
    assert transaction(api, [put]).status_code == 412
    put["request"] = {"method": "PUT", "url": ref, "ifNoneMatch": 'W/"1"'}
    assert transaction(api, [put]).status_code == 412
    patch = {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                          "data": base64.b64encode(json.dumps(
                              [{"op": "add", "path": "/active", "value": True}]).encode()).decode()},
             "request": {"method": "PATCH", "url": ref, "ifMatch": 'W/"3"'}}
    assert transaction(api, [patch]).status_code == 412
    delete = {"request": {"method": "DELETE", "url": ref, "ifNoneMatch": "*"}}
    assert transaction(api, [delete]).status_code == 412
    assert version_of(api, p["id"]) == "1"
    # A batch answers each entry: 412 in the entry, the others done.
    batch = transaction(api, [put, {"resource": {"resourceType": "Patient"}, "request": {"method": "POST",
                                                                                          "url": "Patient"}}], "batch")
    statuses = [e["response"]["status"] for e in batch.json()["entry"]]
    assert statuses[0].startswith("412") and statuses[1].startswith("201")
    # Conditional update that would create, with ifMatch: 412; a conditional delete with no match too.
    v = tag()
    cond_put = {"resource": {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": v}]},
                "request": {"method": "PUT", "url": f"Patient?identifier={SYSTEM}|{v}", "ifMatch": 'W/"1"'}}
    assert transaction(api, [cond_put]).status_code == 412
    cond_delete = {"request": {"method": "DELETE", "url": f"Patient?identifier={SYSTEM}|{v}", "ifMatch": 'W/"1"'}}
    assert transaction(api, [cond_delete]).status_code == 412


def test_bundle_entry_conditions_in_the_wrong_place_are_refused(api: FhirApi) -> None:
    p = new_patient(api)
    wrong = [
        {"resource": {**p}, "request": {"method": "PUT", "url": f"Patient/{p['id']}", "ifNoneExist": "_id=x"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient", "ifMatch": 'W/"1"'}},
        {"request": {"method": "GET", "url": f"Patient/{p['id']}", "ifMatch": 'W/"1"'}},
        {"request": {"method": "GET", "url": "Patient?_id=x", "ifNoneMatch": 'W/"1"'}},
        {"resource": {**p}, "request": {"method": "PUT", "url": f"Patient/{p['id']}",
                                        "ifModifiedSince": "2020-01-01T00:00:00Z"}},
    ]
    for entry in wrong:
        r = transaction(api, [entry])
        assert r.status_code == 400, (entry, r.text)
        assert "request" in r.json()["issue"][0]["diagnostics"]


def test_bundle_read_entries_answer_304(api: FhirApi) -> None:
    p = new_patient(api)
    entries = [{"request": {"method": "GET", "url": f"Patient/{p['id']}", "ifNoneMatch": 'W/"1"'}},
               {"request": {"method": "GET", "url": f"Patient/{p['id']}", "ifNoneMatch": 'W/"0"'}},
               {"request": {"method": "GET", "url": f"Patient/{p['id']}",
                            "ifModifiedSince": "2100-01-01T00:00:00Z"}},
               {"request": {"method": "GET", "url": f"Patient/{p['id']}",
                            "ifModifiedSince": "2000-01-01T00:00:00Z"}}]
    for kind in ("batch", "transaction"):
        out = transaction(api, entries, kind).json()["entry"]
        assert out[0]["response"]["status"].startswith("304") and "resource" not in out[0]
        assert out[1]["response"]["status"].startswith("200") and out[1]["resource"]["id"] == p["id"]
        assert out[2]["response"]["status"].startswith("304")
        assert out[3]["response"]["status"].startswith("200")


def test_if_none_exist_on_anything_but_a_create_is_refused(api: FhirApi) -> None:
    p = new_patient(api)
    url = f"/Patient/{p['id']}"
    cond = {"If-None-Exist": "_id=x"}
    assert api.put(url, json={**p, "active": True}, headers={**FHIR, **cond}).status_code == 400
    assert api.patch(url, json={"active": True}, headers={**MERGE, **cond}).status_code == 400
    assert api.delete(url, headers=cond).status_code == 400
    assert api.delete(f"/Patient?_id={p['id']}", headers=cond).status_code == 400
    b = api.post("/Binary", content=b"x", headers={"Content-Type": "text/plain"}).json()
    put = api.put(f"/Binary/{b['id']}", content=b"y", headers={"Content-Type": "text/plain", **cond})
    assert put.status_code == 400
    assert api.get(url).json()["meta"]["versionId"] == "1"


def test_a_post_entry_with_criteria_in_its_url_is_a_conditional_create(api: FhirApi) -> None:
    """`POST Patient?identifier=...` in a Bundle (what fhirpy sends outside one) keeps its criteria."""
    v = tag()
    body = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": v}]}
    entry = {"resource": body, "request": {"method": "POST", "url": f"Patient?identifier={SYSTEM}|{v}"}}
    first = transaction(api, [entry])
    assert first.status_code == 200 and first.json()["entry"][0]["response"]["status"].startswith("201")
    again = transaction(api, [entry])
    assert again.json()["entry"][0]["response"]["status"].startswith("200")
    assert again.json()["entry"][0]["resource"]["id"] == first.json()["entry"][0]["resource"]["id"]
    both = {"resource": body, "request": {"method": "POST", "url": f"Patient?identifier={SYSTEM}|{v}",
                                          "ifNoneExist": f"identifier={SYSTEM}|{v}"}}
    assert transaction(api, [both]).status_code == 400
    # A conditional update entry with one match and a body without id (and _format=json, the Bundle's own).
    url = f"Patient?identifier={SYSTEM}|{v}&_format=json"
    updated = transaction(api, [{"resource": {**body, "active": True}, "request": {"method": "PUT", "url": url}}])
    assert updated.status_code == 200, updated.text
    assert updated.json()["entry"][0]["resource"]["id"] == first.json()["entry"][0]["resource"]["id"]
    assert updated.json()["entry"][0]["resource"]["active"] is True


def test_conditions_on_the_bundles_own_request_are_refused(api: FhirApi) -> None:
    for header in ({"If-Match": 'W/"1"'}, {"If-None-Match": "*"}, {"If-None-Exist": "_id=x"}):
        r = api.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": []}, headers={**FHIR, **header})
        assert r.status_code == 400 and "entry" in r.json()["issue"][0]["diagnostics"], r.text
