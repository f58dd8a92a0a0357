"""Binary and Media content negotiation over real HTTP: `_format` first, then a FHIR JSON Accept, then the
bytes; and `Vary` on every answer that depends on a request header."""

from __future__ import annotations

import base64

import httpx

from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json"}


def upload(api: FhirApi, data: bytes, content_type: str) -> str:
    r = api.post("/Binary", content=data, headers={"Content-Type": content_type})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def vary(response: httpx.Response) -> set[str]:
    return {v.strip().lower() for v in response.headers.get("Vary", "").split(",") if v.strip()}


def test_format_overrides_accept_on_read_and_vread(api: FhirApi) -> None:
    """The example: `_format` with an Accept naming the stored type gives the resource; the rule holds on
    vread and HEAD too, and a `_format` this server cannot produce is 406, not the bytes."""
    bid = upload(api, b"\x89PNG raw", "image/png")
    for path in (f"/Binary/{bid}", f"/Binary/{bid}/_history/1"):
        for fmt in ("json", "application/fhir+json", "application/json"):
            r = api.get(path, params={"_format": fmt}, headers={"Accept": "image/png"})
            assert r.status_code == 200 and r.json()["resourceType"] == "Binary", (path, fmt)
            assert base64.b64decode(r.json()["data"]) == b"\x89PNG raw"
        head = api.head(path, params={"_format": "json"}, headers={"Accept": "image/png"})
        assert head.headers["Content-Type"].startswith("application/fhir+json")
        for fmt in ("xml", "application/fhir+xml", "ttl"):
            r = api.get(path, params={"_format": fmt})
            assert r.status_code == 406, (path, fmt)
            assert "_format" in r.json()["issue"][0]["diagnostics"]


def test_every_binary_read_answer_varies_on_accept(api: FhirApi) -> None:
    """Bytes, resource, HEAD, 206, 304 and 416 answers of one URL all say `Vary: Accept` (a cache must not
    hand the bytes to a later FHIR JSON request), and `Vary: Authorization` (they depend on the token)."""
    bid = upload(api, b"0123456789", "text/plain")
    raw = api.get(f"/Binary/{bid}")
    answers = {
        "bytes": raw,
        "resource": api.get(f"/Binary/{bid}", headers={"Accept": "application/fhir+json"}),
        "head": api.head(f"/Binary/{bid}"),
        "range": api.get(f"/Binary/{bid}", headers={"Range": "bytes=0-1"}),
        "not modified": api.get(f"/Binary/{bid}", headers={"If-None-Match": raw.headers["ETag"]}),
        "unsatisfiable": api.get(f"/Binary/{bid}", headers={"Range": "bytes=50-60"}),
        "vread": api.get(f"/Binary/{bid}/_history/1"),
    }
    assert [answers[k].status_code for k in answers] == [200, 200, 200, 206, 304, 416, 200]
    for name, r in answers.items():
        assert {"accept", "authorization"} <= vary(r), (name, r.headers.get("Vary"))


def test_media_answers_vary_on_accept_and_format_wins(api: FhirApi) -> None:
    r = api.post("/Media", json={"resourceType": "Media", "status": "completed", "content": {
        "contentType": "image/png", "data": base64.b64encode(b"png bytes").decode()}}, headers=FHIR)
    mid = r.json()["id"]
    raw = api.get(f"/Media/{mid}", headers={"Accept": "image/png"})
    assert raw.content == b"png bytes" and "accept" in vary(raw)
    resource = api.get(f"/Media/{mid}")
    assert resource.json()["resourceType"] == "Media" and "accept" in vary(resource)
    formatted = api.get(f"/Media/{mid}", params={"_format": "json"}, headers={"Accept": "image/png"})
    assert formatted.json()["resourceType"] == "Media"


def test_protected_answers_vary_on_authorization_public_ones_do_not(api: FhirApi, server: ServerProcess) -> None:
    """Every answer that depends on the token says so; the CapabilityStatement and signed storage URLs,
    which ignore Authorization, do not."""
    created = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR)
    for r in (created, api.get(f"/Patient/{created.json()['id']}"), api.get("/Patient"),
              httpx.get(f"{server.base}/Patient")):  # a 401 depends on Authorization too
        assert "authorization" in vary(r), (r.request.url, r.status_code)
    assert "authorization" not in vary(httpx.get(f"{server.base}/metadata"))
