"""Binary.securityContext: only callers who may read the named resource see the Binary; changing it
needs update rights on that resource."""

from __future__ import annotations

import base64
import uuid
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


def test_a_search_page_signs_exactly_the_binaries_each_caller_may_read(scene: Scene, api: FhirApi) -> None:
    """Attachment URLs on a search page are signed after one access decision for the whole page (no query
    per Binary): it must agree, Binary by Binary, with what the caller's own read of each Binary gives,
    the rule for a securityContext resource deleted since the Binary was written included."""
    a, b = scene.patient_a, scene.patient_b
    with server_api(scene) as admin:
        def binary(context: str | None) -> str:
            body = _binary(context) if context else {k: v for k, v in _binary("x").items() if k != "securityContext"}
            r = admin.post("/Binary", json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        def doc(patient: str, urls: list[str] | None = None, rid: str | None = None) -> str:
            body = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": patient},
                    "content": [{"attachment": {"url": u}} for u in urls or []]
                    or [{"attachment": {"contentType": "text/plain"}}]}
            r = admin.put(f"/DocumentReference/{rid}", json={**body, "id": rid}) if rid else \
                admin.post("/DocumentReference", json=body)
            assert r.status_code in (200, 201), r.text
            return str(r.json()["id"])

        about_a, about_b = doc(f"Patient/{a}"), doc(f"Patient/{b}")
        rebound = doc(f"Patient/{a}")
        binaries = {
            "patient a": binary(f"Patient/{a}"), "patient b": binary(f"Patient/{b}"),
            "doc about a": binary(f"DocumentReference/{about_a}"),
            "doc about b": binary(f"DocumentReference/{about_b}"),
            "rebound doc": binary(f"DocumentReference/{rebound}"), "no context": binary(None),
        }
        # The document the last Binary names is deleted, then re-created about patient B: the Binary stays
        # bound to the document as it was (about A).
        assert admin.delete(f"/DocumentReference/{rebound}").status_code in (200, 204)
        doc(f"Patient/{b}", rid=rebound)
        urls = [f"Binary/{bid}" for bid in binaries.values()]
        tag = uuid.uuid4().hex
        for patient in (a, b):
            r = admin.post("/DocumentReference", json={
                "resourceType": "DocumentReference", "status": "current",
                "subject": {"reference": f"Patient/{patient}"},
                "identifier": [{"system": "urn:page", "value": tag}],
                "content": [{"attachment": {"url": u}} for u in urls]})
            assert r.status_code == 201, r.text
    expected = {scene.token_a: {"patient a", "doc about a", "rebound doc"},
                scene.token_b: {"patient b", "doc about b"}}
    for token, readable in expected.items():
        with scene.as_(token) as c:
            page = c.get("/DocumentReference", params={"identifier": f"urn:page|{tag}"}).json()
            assert len(page["entry"]) == 1
            attachments = [x["attachment"]["url"] for x in page["entry"][0]["resource"]["content"]]
            signed = {name for name, url in zip(binaries, attachments, strict=True) if "/storage/" in url}
            direct = {name for name, bid in binaries.items() if c.get(f"/Binary/{bid}").status_code == 200}
            assert signed == direct == readable, (signed, direct)
            unsigned = [url for url in attachments if "/storage/" not in url]
            assert all(url.startswith("Binary/") for url in unsigned)


def server_api(scene: Scene) -> FhirApi:
    return scene.server.api(headers=FHIR)
