"""Binary.securityContext: only callers who may read the named resource see the Binary; changing it
needs update rights on that resource."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.security_support import bearer, client_token
from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@dataclass
class Scene:
    server: ServerProcess
    patient_a: str
    patient_b: str
    binary_a: str  # securityContext Patient A, two versions
    binary_via_doc: str  # securityContext DocumentReference about Patient A
    token_a: str
    token_b: str

    def as_(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.base, headers={**FHIR, **bearer(token)}, timeout=60)


def _binary(context: str, text: bytes = b"x-ray") -> dict[str, object]:
    return {"resourceType": "Binary", "contentType": "image/png", "data": base64.b64encode(text).decode(),
            "securityContext": {"reference": context}}


@pytest.fixture(scope="module")
def scene(server: ServerProcess) -> Iterator[Scene]:
    with server.api(headers=FHIR) as api:
        a = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        b = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        bid = api.post("/Binary", json=_binary(f"Patient/{a}")).json()["id"]
        assert api.put(f"/Binary/{bid}", json={**_binary(f"Patient/{a}", b"v2"), "id": bid}).status_code == 200
        doc = api.post("/DocumentReference", json={
            "resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{a}"},
            "content": [{"attachment": {"contentType": "image/png"}}]}).json()["id"]
        via_doc = api.post("/Binary", json=_binary(f"DocumentReference/{doc}")).json()["id"]
    yield Scene(server, a, b, bid, via_doc,
                client_token(server, "sc-a", "patient/*.cruds", f"Patient/{a}"),
                client_token(server, "sc-b", "patient/*.cruds", f"Patient/{b}"))


def _reach(scene: Scene, token: str, binary_id: str) -> dict[str, object]:
    """What a caller gets for one Binary along every read path."""
    with scene.as_(token) as c:
        batch = c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Binary/{binary_id}"}},
            {"request": {"method": "GET", "url": f"Binary?_id={binary_id}"}}]}).json()
        search = c.get("/Binary", params={"_id": binary_id}).json()
        all_binaries = c.get("/Binary", params={"_count": "1000"}).json()
        type_history = c.get("/Binary/_history", params={"_count": "1000"}).json()
        return {
            "read": c.get(f"/Binary/{binary_id}").status_code,
            "json read": c.get(f"/Binary/{binary_id}", params={"_format": "json"}).status_code,
            "vread": c.get(f"/Binary/{binary_id}/_history/1").status_code,
            "history": c.get(f"/Binary/{binary_id}/_history").status_code,
            "search by id": len(search.get("entry", [])),
            "search all": sum(e["resource"]["id"] == binary_id for e in all_binaries.get("entry", [])),
            "type history": sum(e.get("resource", {}).get("id") == binary_id
                                for e in type_history.get("entry", [])),
            "batch read": batch["entry"][0]["response"]["status"].split()[0],
            "batch search": len(batch["entry"][1]["resource"].get("entry", [])),
        }


def test_patient_a_reaches_its_binary_everywhere(scene: Scene) -> None:
    assert _reach(scene, scene.token_a, scene.binary_a) == {
        "read": 200, "json read": 200, "vread": 200, "history": 200, "search by id": 1, "search all": 1,
        "type history": 2, "batch read": "200", "batch search": 1}


def test_patient_b_cannot_reach_patient_a_binary_anywhere(scene: Scene) -> None:
    assert _reach(scene, scene.token_b, scene.binary_a) == {
        "read": 404, "json read": 404, "vread": 404, "history": 404, "search by id": 0, "search all": 0,
        "type history": 0, "batch read": "404", "batch search": 0}


def test_context_through_another_resource_in_the_compartment(scene: Scene) -> None:
    with scene.as_(scene.token_a) as c:
        assert c.get(f"/Binary/{scene.binary_via_doc}").status_code == 200
    with scene.as_(scene.token_b) as c:
        assert c.get(f"/Binary/{scene.binary_via_doc}").status_code == 404


def test_changing_the_context_needs_update_rights_on_the_named_resource(scene: Scene, api: FhirApi) -> None:
    bid = scene.binary_a
    body = {**_binary(f"Patient/{scene.patient_b}"), "id": bid}
    with scene.as_(scene.token_b) as c:  # B cannot see A's Binary at all: 404, nothing changed
        assert c.put(f"/Binary/{bid}", json=body).status_code == 404
        assert c.delete(f"/Binary/{bid}").status_code == 404
    with scene.as_(scene.token_a) as c:  # A may read it but cannot hand it to B
        assert c.put(f"/Binary/{bid}", json=body).status_code == 403
    # May read Patients and write Binaries, but not update Patients: sees it, may not change it.
    token = client_token(scene.server, "pat-reader", "system/Binary.cruds system/Patient.rs")
    with scene.as_(token) as c:
        assert c.get(f"/Binary/{bid}").status_code == 200
        r = c.put(f"/Binary/{bid}", json={**_binary(f"Patient/{scene.patient_a}", b"new"), "id": bid})
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        assert c.post("/Binary", json=_binary(f"Patient/{scene.patient_a}")).status_code == 403
    current = api.get(f"/Binary/{bid}", headers=FHIR).json()
    assert current["securityContext"]["reference"] == f"Patient/{scene.patient_a}"
    assert current["meta"]["versionId"] == "2"


def test_patient_cannot_create_a_binary_for_another_patient(scene: Scene) -> None:
    with scene.as_(scene.token_b) as c:
        r = c.post("/Binary", json=_binary(f"Patient/{scene.patient_a}"))
        assert r.status_code == 403
        mine = c.post("/Binary", json=_binary(f"Patient/{scene.patient_b}"))
        assert mine.status_code == 201
    with scene.as_(scene.token_a) as c:
        assert c.get(f"/Binary/{mine.json()['id']}").status_code == 404
