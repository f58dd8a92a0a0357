"""FHIR REST create/read/vread/update/delete/history over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}


def create(api: FhirApi, resource: dict, **headers: str) -> httpx.Response:
    return api.post(f"/{resource['resourceType']}", json=resource, headers={**FHIR, **headers})


def test_create_returns_201_with_location_etag_and_meta(api: FhirApi) -> None:
    r = create(api, {"resourceType": "Patient", "name": [{"family": "Chalmers"}]})
    assert r.status_code == 201
    body = r.json()
    assert body["meta"]["versionId"] == "1" and "lastUpdated" in body["meta"]
    assert r.headers["Location"] == f"{api.base}/Patient/{body['id']}/_history/1"
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Last-Modified"].endswith("GMT")
    assert r.headers["Content-Type"].startswith("application/fhir+json")


def test_application_json_is_accepted_as_fhir_json(api: FhirApi) -> None:
    r = api.post("/Observation", content=b'{"resourceType":"Observation","status":"final","code":{"text":"x"}}',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 201


def test_prefer_return(api: FhirApi) -> None:
    r = create(api, {"resourceType": "Patient"}, Prefer="return=minimal")
    assert r.status_code == 201 and r.content == b"" and "Location" in r.headers
    r = create(api, {"resourceType": "Patient"}, Prefer="return=OperationOutcome")
    assert r.json()["resourceType"] == "OperationOutcome"
    r = create(api, {"resourceType": "Patient"}, Prefer="return=representation")
    assert r.json()["resourceType"] == "Patient"


def test_conditional_create(api: FhirApi) -> None:
    ident = {"system": "urn:test:mrn", "value": f"mrn-{time.time_ns()}"}
    cond = f"identifier={ident['system']}|{ident['value']}"
    first = create(api, {"resourceType": "Patient", "identifier": [ident]}, **{"If-None-Exist": cond})
    assert first.status_code == 201
    second = create(api, {"resourceType": "Patient", "identifier": [ident]}, **{"If-None-Exist": cond})
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    # a second resource with the same identifier makes the condition ambiguous
    create(api, {"resourceType": "Patient", "identifier": [ident]})
    third = create(api, {"resourceType": "Patient", "identifier": [ident]}, **{"If-None-Exist": cond})
    assert third.status_code == 412


def test_read_vread_update_and_history(api: FhirApi) -> None:
    pid = create(api, {"resourceType": "Patient", "active": True}).json()["id"]
    r = api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": False}, headers=FHIR)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    assert r.headers["ETag"] == 'W/"2"'
    assert api.get(f"/Patient/{pid}").json()["active"] is False
    assert api.get(f"/Patient/{pid}/_history/1").json()["active"] is True
    assert api.get(f"/Patient/{pid}/_history/9").status_code == 404
    hist = api.get(f"/Patient/{pid}/_history").json()
    assert hist["type"] == "history" and hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]


def test_update_creates_when_id_is_new(api: FhirApi) -> None:
    rid = f"new-{time.time_ns()}"
    r = api.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid}, headers=FHIR)
    assert r.status_code == 201
    assert r.headers["Location"].endswith(f"/Patient/{rid}/_history/1")


def test_if_match(api: FhirApi) -> None:
    pid = create(api, {"resourceType": "Patient"}).json()["id"]
    body = {"resourceType": "Patient", "id": pid, "active": True}
    assert api.put(f"/Patient/{pid}", json=body, headers={**FHIR, "If-Match": 'W/"3"'}).status_code == 412
    assert api.put(f"/Patient/{pid}", json=body, headers={**FHIR, "If-Match": 'W/"1"'}).status_code == 200
    assert api.put(f"/Patient/{pid}", json=body, headers={**FHIR, "If-Match": 'W/"1"'}).status_code == 412


def test_if_match_on_delete(api: FhirApi) -> None:
    """DELETE with If-Match deletes only the version it names (RFC 9110 13.1.1), by URL and in a batch;
    it used to delete whatever version was current."""
    pid = create(api, {"resourceType": "Patient"}).json()["id"]
    assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True},
                   headers=FHIR).status_code == 200
    r = api.delete(f"/Patient/{pid}", headers={"If-Match": 'W/"1"'})
    assert r.status_code == 412 and "current version 2" in r.json()["issue"][0]["diagnostics"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'}}]}
    assert api.post("", json=batch, headers=FHIR).json()["entry"][0]["response"]["status"].startswith("412")
    assert api.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"
    assert api.delete(f"/Patient/{pid}", headers={"If-Match": 'W/"2"'}).status_code == 204
    assert api.delete(f"/Patient/{pid}", headers={"If-Match": 'W/"2"'}).status_code == 412
    assert api.get(f"/Patient/{pid}").status_code == 410


def test_delete_is_logical_and_history_keeps_versions(api: FhirApi) -> None:
    pid = create(api, {"resourceType": "Patient", "gender": "female"}).json()["id"]
    assert api.delete(f"/Patient/{pid}").status_code == 204
    r = api.get(f"/Patient/{pid}")
    assert r.status_code == 410 and r.json()["resourceType"] == "OperationOutcome"
    assert api.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert api.get(f"/Patient/{pid}/_history/2").status_code == 410
    hist = api.get(f"/Patient/{pid}/_history").json()
    assert hist["total"] == 2
    assert hist["entry"][0]["request"]["method"] == "DELETE" and "resource" not in hist["entry"][0]
    # a deleted resource can be brought back by update
    r = api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=FHIR)
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3"


def test_type_history_count_and_since(api: FhirApi) -> None:
    rtype = "Device"
    before = api.get("/metadata").headers.get("date")
    assert before
    marker = create(api, {"resourceType": rtype}).json()["meta"]["lastUpdated"]
    for _ in range(3):
        create(api, {"resourceType": rtype})
    page = api.get(f"/{rtype}/_history", params={"_since": marker, "_count": 2}).json()
    assert page["total"] == 4 and len(page["entry"]) == 2
    nxt = [link["url"] for link in page["link"] if link["relation"] == "next"][0]
    page2 = api.get(nxt).json()
    assert len(page2["entry"]) == 2
    ids = {e["resource"]["id"] for e in page["entry"] + page2["entry"]}
    assert len(ids) == 4
    stamps = [e["resource"]["meta"]["lastUpdated"] for e in page["entry"] + page2["entry"]]
    assert stamps == sorted(stamps, reverse=True)


def test_concurrent_updates_lose_nothing(api: FhirApi) -> None:
    pid = create(api, {"resourceType": "Patient"}).json()["id"]
    n = 16

    def put(i: int) -> int:
        body = {"resourceType": "Patient", "id": pid, "name": [{"text": f"writer {i}"}]}
        return api.put(f"/Patient/{pid}", json=body, headers=FHIR).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(n)))
    assert statuses.count(200) == n
    hist = api.get(f"/Patient/{pid}/_history", params={"_count": 100}).json()
    assert hist["total"] == n + 1
    assert sorted(int(e["resource"]["meta"]["versionId"]) for e in hist["entry"]) == list(range(1, n + 2))
    names = {e["resource"]["name"][0]["text"] for e in hist["entry"] if "name" in e["resource"]}
    assert names == {f"writer {i}" for i in range(n)}


def test_concurrent_if_match_updates_exactly_one_wins(api: FhirApi) -> None:
    pid = create(api, {"resourceType": "Patient"}).json()["id"]

    def put(i: int) -> int:
        body = {"resourceType": "Patient", "id": pid, "gender": "other"}
        return api.put(f"/Patient/{pid}", json=body,
                         headers={**FHIR, "If-Match": 'W/"1"'}, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(8)))
    assert statuses.count(200) == 1 and statuses.count(412) == 7


def test_delete_answers_prefer_return_operation_outcome(api: FhirApi) -> None:
    """`Prefer: return=OperationOutcome` got a bare 204 from a delete, as every other write answers it."""
    pid = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
    r = api.delete(f"/Patient/{pid}", headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"', r.text
    assert r.json()["resourceType"] == "OperationOutcome" and f"Patient/{pid} deleted" in r.text
    again = api.delete(f"/Patient/{pid}", headers={"Prefer": "return=OperationOutcome"})
    assert again.status_code == 200 and "nothing was deleted" in again.text
    assert api.delete(f"/Patient/{pid}").status_code == 204


def test_a_subsetted_resource_is_not_written_back(api: FhirApi) -> None:
    """A resource read with _elements (tagged SUBSETTED) and saved again, as fhirpy's `.save()` and Medplum's
    updateResource do, replaced the whole resource: name and birthDate were lost. It is now a 400, and
    nothing changes; the same holds in a transaction."""
    whole = {"resourceType": "Patient", "name": [{"family": "Kept"}], "birthDate": "1990-01-01"}
    pid = api.post("/Patient", json=whole, headers=FHIR).json()["id"]
    part = api.get("/Patient", params={"_id": pid, "_elements": "gender"}).json()["entry"][0]["resource"]
    part["gender"] = "male"
    r = api.put(f"/Patient/{pid}", json=part, headers=FHIR)
    assert r.status_code == 400 and "SUBSETTED" in r.text, r.text
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": part, "request": {"method": "PUT", "url": f"Patient/{pid}"}}]}
    assert api.post("", json=bundle, headers=FHIR).status_code == 400
    kept = api.get(f"/Patient/{pid}").json()
    assert kept["meta"]["versionId"] == "1" and kept["name"][0]["family"] == "Kept" and "gender" not in kept


def test_a_version_id_is_matched_as_written(api: FhirApi) -> None:
    """Version ids are strings: `_history/01` read version 1."""
    pid = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
    assert api.get(f"/Patient/{pid}/_history/1").status_code == 200
    r = api.get(f"/Patient/{pid}/_history/01")
    assert r.status_code == 404 and "'01'" in r.text, r.text

