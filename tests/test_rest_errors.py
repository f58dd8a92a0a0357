"""Bad input is a 4xx OperationOutcome that names the problem, and changes nothing."""

from __future__ import annotations

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
