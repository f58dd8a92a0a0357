"""An update or PATCH that changes nothing writes no new version: the answer is the current version and
history lists only real changes (as HAPI FHIR and Medplum do). A change of a decimal's precision, of a
tag or of any element is a change."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}


def patient(api: FhirApi) -> dict[str, Any]:
    r = api.post("/Patient", json={"resourceType": "Patient", "active": True,
                                   "identifier": [{"system": "urn:test:same", "value": uuid.uuid4().hex}],
                                   "name": [{"family": "Same", "given": ["Ann"]}]}, headers=FHIR)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def history_total(api: FhirApi, rid: str) -> int:
    total: int = api.get(f"/Patient/{rid}/_history").json()["total"]
    return total


def test_put_of_the_same_content_keeps_the_version(api: FhirApi) -> None:
    p = patient(api)
    same = {k: v for k, v in p.items() if k != "meta"}
    same["name"] = [{"given": ["Ann"], "family": "Same"}]  # key order is no change
    r = api.put(f"/Patient/{p['id']}", json=same, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "1" and r.headers["ETag"] == 'W/"1"'
    assert r.json()["meta"]["lastUpdated"] == p["meta"]["lastUpdated"]
    assert history_total(api, p["id"]) == 1


def test_patch_that_changes_nothing_keeps_the_version(api: FhirApi) -> None:
    p = patient(api)
    for content_type, body in (
            ("application/json-patch+json", [{"op": "replace", "path": "/active", "value": True}]),
            ("application/merge-patch+json", {"active": True}),
            ("application/json-patch+json", [{"op": "test", "path": "/active", "value": True}])):
        r = api.patch(f"/Patient/{p['id']}", json=body, headers={"Content-Type": content_type})
        assert r.status_code == 200, r.text
        assert r.json()["meta"]["versionId"] == "1", (content_type, r.text)
    assert history_total(api, p["id"]) == 1
    merge = {"Content-Type": "application/merge-patch+json"}
    r = api.patch(f"/Patient/{p['id']}", json={"active": False}, headers=merge)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    assert history_total(api, p["id"]) == 2


def test_a_changed_tag_or_precision_is_a_new_version(api: FhirApi) -> None:
    p = patient(api)
    tagged = {**{k: v for k, v in p.items() if k != "meta"},
              "meta": {"tag": [{"system": "urn:test", "code": "t"}]}}
    r = api.put(f"/Patient/{p['id']}", json=tagged, headers=FHIR)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    obs = ('{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":%s}%s}')
    r = api.post("/Observation", content=obs % ("1.5", ""), headers=FHIR)
    rid = r.json()["id"]
    same = api.put(f"/Observation/{rid}", content=obs % ("1.5", f',"id":"{rid}"'), headers=FHIR)
    assert same.json()["meta"]["versionId"] == "1"
    finer = api.put(f"/Observation/{rid}", content=obs % ("1.50", f',"id":"{rid}"'), headers=FHIR)
    assert finer.json()["meta"]["versionId"] == "2" and '"value":1.50' in finer.text


def test_unchanged_entries_in_a_transaction_keep_their_version(api: FhirApi) -> None:
    p = patient(api)
    same = {k: v for k, v in p.items() if k != "meta"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": same, "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}]}
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["etag"] == 'W/"1"'
    assert history_total(api, p["id"]) == 1
