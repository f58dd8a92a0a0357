"""Batch and transaction Bundles at the FHIR base."""

from __future__ import annotations

import uuid

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}


def test_transaction_resolves_urn_uuid_references(api: FhirApi) -> None:
    pat_urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                          "subject": {"reference": pat_urn},
                          "note": [{"text": "see also"}], "focus": [{"reference": pat_urn}]},
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": pat_urn, "resource": {"resourceType": "Patient", "active": True},
             "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    obs_entry, pat_entry = out["entry"]
    assert obs_entry["response"]["status"].startswith("201")
    assert obs_entry["response"]["location"].startswith("Observation/")
    assert obs_entry["response"]["etag"] == 'W/"1"'
    pat_id = pat_entry["response"]["location"].split("/")[1]
    obs_id = obs_entry["response"]["location"].split("/")[1]
    obs = api.get(f"/Observation/{obs_id}").json()
    assert obs["subject"]["reference"] == f"Patient/{pat_id}"
    assert obs["focus"][0]["reference"] == f"Patient/{pat_id}"
    assert api.get("/Observation", params={"patient": pat_id}).json()["entry"][0]["resource"]["id"] == obs_id


def test_transaction_is_all_or_nothing(api: FhirApi) -> None:
    marker = uuid.uuid4().hex
    existing = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()
    other = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:tx", "value": marker}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": existing["id"], "active": True},
             "request": {"method": "PUT", "url": f"Patient/{existing['id']}"}},
            {"resource": {"resourceType": "Patient", "id": other["id"]},
             "request": {"method": "PUT", "url": f"Patient/{other['id']}", "ifMatch": 'W/"7"'}},
        ],
    }
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 412
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "entry" not in api.get("/Patient", params={"identifier": f"urn:tx|{marker}"}).json()
    assert api.get(f"/Patient/{existing['id']}").json()["meta"]["versionId"] == "1"


def test_transaction_acting_twice_on_one_resource_fails(api: FhirApi) -> None:
    """R4 http.html#trules: identities that overlap, conditional ones resolved, fail the transaction (400,
    nothing written); it used to apply both entries in turn. A batch has no such rule."""
    pid = api.post("/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": "urn:overlap", "value": uuid.uuid4().hex}]}, headers=FHIR).json()
    criteria = f"Patient?identifier=urn:overlap|{pid['identifier'][0]['value']}"
    put = {"resource": {"resourceType": "Patient", "id": pid["id"], "active": True},
           "request": {"method": "PUT", "url": f"Patient/{pid['id']}"}}
    for second in [put, {"request": {"method": "DELETE", "url": f"Patient/{pid['id']}"}},
                   {"request": {"method": "DELETE", "url": criteria}},
                   {"resource": {"resourceType": "Patient", "active": False},
                    "request": {"method": "PUT", "url": criteria}}]:
        r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [put, second]}, headers=FHIR)
        assert r.status_code == 400 and "Bundle.entry[1]" in r.json()["issue"][0]["expression"], r.text
    assert api.get(f"/Patient/{pid['id']}").json()["meta"]["versionId"] == "1"
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [put, put]}, headers=FHIR)
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "200"]


def test_batch_entries_succeed_or_fail_independently(api: FhirApi) -> None:
    pat = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()
    bundle = {
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Spaceship"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": f"Patient/{pat['id']}"}},
            {"request": {"method": "GET", "url": "Patient/nope-nope"}},
            {"request": {"method": "DELETE", "url": f"Patient/{pat['id']}"}},
            {"request": {"method": "GET", "url": f"Patient?_id={pat['id']}"}},
        ],
    }
    out = api.post("", json=bundle, headers=FHIR).json()
    statuses = [e["response"]["status"].split()[0] for e in out["entry"]]
    assert out["type"] == "batch-response"
    assert statuses == ["201", "400", "200", "404", "204", "200"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert out["entry"][2]["resource"]["id"] == pat["id"]


def test_bundle_type_must_be_batch_or_transaction(api: FhirApi) -> None:
    r = api.post("", json={"resourceType": "Bundle", "type": "collection"}, headers=FHIR)
    assert r.status_code == 400 and "batch or transaction" in r.json()["issue"][0]["diagnostics"]


def test_metadata_parses_with_strict_r4_models(api: FhirApi) -> None:
    from fhirclient.models.capabilitystatement import CapabilityStatement

    body = api.get("/metadata").json()
    cs = CapabilityStatement(body, strict=True)
    assert cs.fhirVersion == "4.0.1"
    types = {r.type for r in cs.rest[0].resource}
    assert {"Patient", "Binary", "DocumentReference", "Media"} <= types
