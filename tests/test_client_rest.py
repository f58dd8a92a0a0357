"""The Python client's resource interactions, sync and async, against the real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fhirvault.client import FhirError, GoneError, InvalidError, NotFoundError, PreconditionFailedError
from tests.support.clients import admin_kwargs, open_client
from tests.support.server import ServerProcess


@pytest.fixture(params=["sync", "async"])
def fhir(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Any]:
    with open_client(request.param, server.base, **admin_kwargs(server)) as client:
        yield client


def test_create_read_update_vread_delete(fhir: Any) -> None:
    created = fhir.create_resource({"resourceType": "Patient", "name": [{"family": "Client"}]})
    assert created["id"] and created["meta"]["versionId"] == "1"
    read = fhir.read_resource("Patient", created["id"])
    assert read["name"] == [{"family": "Client"}]

    updated = fhir.update_resource({**read, "active": True}, if_match=read["meta"]["versionId"])
    assert updated["meta"]["versionId"] == "2" and updated["active"] is True
    assert "active" not in fhir.vread("Patient", created["id"], 1)
    assert fhir.vread("Patient", created["id"], "2")["active"] is True

    fhir.delete_resource("Patient", created["id"])
    with pytest.raises(GoneError) as gone:
        fhir.read_resource("Patient", created["id"])
    assert gone.value.status == 410 and "deleted" in str(gone.value)


def test_update_with_stale_version_raises_412_with_outcome_text(fhir: Any) -> None:
    patient = fhir.create_resource({"resourceType": "Patient"})
    fhir.update_resource({**patient, "active": True})
    with pytest.raises(PreconditionFailedError) as err:
        fhir.update_resource({**patient, "active": False}, if_match='W/"1"')
    assert err.value.status == 412
    assert err.value.outcome["resourceType"] == "OperationOutcome"
    assert str(err.value) == err.value.outcome["issue"][0]["diagnostics"]
    assert "does not match" in str(err.value)
    assert fhir.read_resource("Patient", patient["id"])["active"] is True   # nothing changed


def test_missing_resource_raises_404_with_outcome_text(fhir: Any) -> None:
    with pytest.raises(NotFoundError) as err:
        fhir.read_resource("Patient", "no-such-patient")
    assert err.value.status == 404
    assert "Patient/no-such-patient" in str(err.value)
    assert isinstance(err.value, FhirError)


def test_invalid_resource_raises_400(fhir: Any) -> None:
    with pytest.raises(InvalidError) as err:
        fhir.update_resource({"resourceType": "Patient", "id": "bad_id!"})
    assert err.value.status == 400 and "valid resource id" in str(err.value)


def test_search_follows_next_links_through_every_page(fhir: Any) -> None:
    marker = f"client-search-{id(fhir)}"
    ids = {fhir.create_resource({"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": marker}]})["id"]
           for _ in range(7)}
    found = list(fhir.search("Patient", {"identifier": f"urn:t|{marker}", "_count": 2}))
    assert {r["id"] for r in found} == ids and len(found) == 7

    as_pairs = list(fhir.search("Patient", [("identifier", f"urn:t|{marker}"), ("_count", "3")]))
    assert {r["id"] for r in as_pairs} == ids


def test_history_of_an_instance_across_pages(fhir: Any) -> None:
    patient = fhir.create_resource({"resourceType": "Patient"})
    for n in range(4):
        patient = fhir.update_resource({**patient, "gender": ["male", "female", "other", "unknown"][n]})
    fhir.delete_resource("Patient", patient["id"])
    entries = list(fhir.history("Patient", patient["id"], {"_count": 2}))
    assert len(entries) == 6
    versions = [e["response"]["etag"] for e in entries]
    assert versions == [f'W/"{v}"' for v in range(6, 0, -1)]
    assert "resource" not in entries[0] and entries[1]["resource"]["gender"] == "unknown"


def test_transaction_creates_all_entries(fhir: Any) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    response = fhir.transaction(bundle)
    assert response["type"] == "transaction-response"
    locations = [e["response"]["location"] for e in response["entry"]]
    patient_id = locations[0].split("/")[1]
    obs = fhir.read_resource("Observation", locations[1].split("/")[1])
    assert obs["subject"]["reference"] == f"Patient/{patient_id}"


def test_decimals_keep_their_precision_through_the_client(fhir: Any, server: ServerProcess) -> None:
    """A value read as 1.50 goes back as 1.50 when the resource is updated (R4 datatypes.html#decimal)."""
    import httpx

    with server.api() as api:
        text = ('{"resourceType":"Observation","status":"final","code":{"text":"w"},'
                '"valueQuantity":{"value":1.50}}')
        rid = api.post("/Observation", content=text, headers={"Content-Type": "application/fhir+json"}).json()["id"]
        read = fhir.read_resource("Observation", rid)
        assert read["valueQuantity"]["value"] == 1.5
        updated = fhir.update_resource({**read, "status": "amended"})
        assert updated["meta"]["versionId"] == "2"
        stored = api.get(f"/Observation/{rid}")
        assert isinstance(stored, httpx.Response) and '"value":1.50' in stored.text
