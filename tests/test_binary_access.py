"""$binary-access-read / $binary-access-write and raw Media, in every storage mode on both databases."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.binary import bapi, binary_server, database, sha1_b64, storage_mode  # noqa: F401 - fixtures
from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json"}
INLINE_MAX = 64 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def create(api: FhirApi, resource: dict[str, Any]) -> dict[str, Any]:
    r = api.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def two_attachment_doc(api: FhirApi) -> dict[str, Any]:
    return create(api, {"resourceType": "DocumentReference", "status": "current", "content": [
        {"attachment": {"contentType": "text/plain", "data": b64(b"first attachment")}},
        {"attachment": {"contentType": "application/pdf", "data": b64(b"%PDF second")}},
    ]})


def diagnostics(r: Any) -> str:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return str(body["issue"][0]["diagnostics"])


def test_read_first_and_second_attachment(bapi: FhirApi) -> None:  # noqa: F811
    doc = two_attachment_doc(bapi)
    first = bapi.get(f"/DocumentReference/{doc['id']}/$binary-access-read",
                     params={"path": "DocumentReference.content.attachment"})
    assert first.status_code == 200 and first.content == b"first attachment"
    assert first.headers["Content-Type"] == "text/plain"
    assert first.headers["Content-Length"] == str(len(b"first attachment"))
    assert first.headers["ETag"] == f'"{hashlib.sha256(b"first attachment").hexdigest()}"'
    second = bapi.get(f"/DocumentReference/{doc['id']}/$binary-access-read",
                      params={"path": "DocumentReference.content[1].attachment"})
    assert second.content == b"%PDF second" and second.headers["Content-Type"] == "application/pdf"
    part = bapi.get(f"/DocumentReference/{doc['id']}/$binary-access-read",
                    params={"path": "DocumentReference.content[1].attachment"}, headers={"Range": "bytes=1-3"})
    assert part.status_code == 206 and part.content == b"PDF"
    posted = bapi.post(f"/DocumentReference/{doc['id']}/$binary-access-read", json={
        "resourceType": "Parameters",
        "parameter": [{"name": "path", "valueString": "DocumentReference.content[1].attachment"}]}, headers=FHIR)
    assert posted.content == b"%PDF second"


def test_bad_paths_and_missing_content(bapi: FhirApi) -> None:  # noqa: F811
    doc = two_attachment_doc(bapi)
    url = f"/DocumentReference/{doc['id']}/$binary-access-read"
    cases = {
        None: "required",
        "DocumentReference.content[x].attachment": "does not parse",
        "DocumentReference.content[5].attachment": "matches nothing",
        "DocumentReference.status": "not an Attachment",
        "Patient.photo": "must start with the resource type",
    }
    for path, needle in cases.items():
        r = bapi.get(url, params={"path": path} if path else {})
        assert r.status_code == 400 and needle in diagnostics(r), (path, r.text)
    empty = create(bapi, {"resourceType": "Media", "status": "completed", "content": {"contentType": "image/png"}})
    r = bapi.get(f"/Media/{empty['id']}/$binary-access-read", params={"path": "Media.content"})
    assert r.status_code == 400 and "no content" in diagnostics(r)
    r = bapi.get("/DocumentReference/nope/$binary-access-read", params={"path": "DocumentReference.content.attachment"})
    assert r.status_code == 404
    bapi.delete(f"/DocumentReference/{doc['id']}")
    r = bapi.get(url, params={"path": "DocumentReference.content.attachment"})
    assert r.status_code == 410


def test_write_keeps_other_elements_and_versions_read_their_own_bytes(bapi: FhirApi, storage_mode: str  # noqa: F811
                                                                      ) -> None:
    data = os.urandom(134_696)
    doc = create(bapi, {"resourceType": "DocumentReference", "status": "current", "content": [
        {"attachment": {"contentType": "text/plain", "data": b64(b"keep me")}},
        {"attachment": {"contentType": "image/jpeg", "title": "scan", "creation": "2024-05-01"}},
    ]})
    path = "DocumentReference.content[1].attachment"
    r = bapi.post(f"/DocumentReference/{doc['id']}/$binary-access-write", params={"path": path}, content=data,
                  headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["meta"]["versionId"] == "2"
    att = updated["content"][1]["attachment"]
    assert att["title"] == "scan" and att["creation"] == "2024-05-01"
    assert att["contentType"] == "application/dicom" and att["size"] == len(data) and att["hash"] == sha1_b64(data)
    assert updated["content"][0]["attachment"]["data"] == b64(b"keep me")
    stored_v2 = bapi.get(f"/DocumentReference/{doc['id']}/_history/2").json()["content"][1]["attachment"]
    # In every mode the content is a new Binary; reads sign its url (inline mode keeps its bytes in it).
    assert "data" not in stored_v2 and "/storage/" in stored_v2["url"]
    got = bapi.get(f"/DocumentReference/{doc['id']}/$binary-access-read", params={"path": path})
    assert got.content == data and got.headers["Content-Type"] == "application/dicom"
    # a second write makes version 3; each version reads back its own bytes
    bapi.post(f"/DocumentReference/{doc['id']}/$binary-access-write", params={"path": path}, content=b"small",
              headers={"Content-Type": "text/plain"})
    v2 = bapi.get(f"/DocumentReference/{doc['id']}/_history/2/$binary-access-read", params={"path": path})
    v3 = bapi.get(f"/DocumentReference/{doc['id']}/_history/3/$binary-access-read", params={"path": path})
    assert v2.content == data and v3.content == b"small"
    small = bapi.get(f"/DocumentReference/{doc['id']}").json()["content"][1]["attachment"]
    # Small content too: the caller chose the binary path, so browsers get a url (no base64 data).
    assert "data" not in small and small["size"] == 5 and httpx.get(small["url"]).content == b"small"


def test_write_errors_change_nothing(bapi: FhirApi) -> None:  # noqa: F811
    doc = two_attachment_doc(bapi)
    url = f"/DocumentReference/{doc['id']}/$binary-access-write"
    path = {"path": "DocumentReference.content[1].attachment"}
    r = bapi.post(url, params=path, content=b"x")
    assert r.status_code == 400 and "Content-Type" in diagnostics(r)
    r = bapi.post(url, params=path, content=b"{}", headers=FHIR)
    assert r.status_code == 400 and "raw content" in diagnostics(r)
    r = bapi.post(url, params=path, content=b"x", headers={"Content-Type": "text/plain", "If-Match": 'W/"9"'})
    assert r.status_code == 412
    r = bapi.post(url, params={"path": "DocumentReference.content[7].attachment"}, content=b"x",
                  headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    assert bapi.get(f"/DocumentReference/{doc['id']}").json()["meta"]["versionId"] == "1"
    r = bapi.post(url, params=path, content=b"ok", headers={"Content-Type": "text/plain", "If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"


def test_write_and_read_a_binary_with_and_without_path(bapi: FhirApi) -> None:  # noqa: F811
    created = bapi.post("/Binary", content=b"v1", headers={"Content-Type": "text/plain",
                                                            "X-Security-Context": "Patient/keep"}).json()
    bid = created["id"]
    r = bapi.post(f"/Binary/{bid}/$binary-access-write", params={"path": "Binary"}, content=b"version two",
                  headers={"Content-Type": "text/markdown"})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    assert r.json()["securityContext"]["reference"] == "Patient/keep"
    r = bapi.post(f"/Binary/{bid}/$binary-access-write", content=b"version three",
                  headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    assert bapi.get(f"/Binary/{bid}/$binary-access-read").content == b"version three"
    v2 = bapi.get(f"/Binary/{bid}/_history/2/$binary-access-read", params={"path": "Binary"})
    assert v2.content == b"version two" and v2.headers["Content-Type"] == "text/markdown"


def test_transaction_attachments_read_back(bapi: FhirApi) -> None:  # noqa: F811
    payloads = [os.urandom(n) for n in (10, 70_000, 200_000)]
    entries: list[dict[str, Any]] = [{"fullUrl": "urn:uuid:7f1c8f0e-0000-4000-8000-000000000001",
                                      "resource": {"resourceType": "Patient"},
                                      "request": {"method": "POST", "url": "Patient"}}]
    for data in payloads:
        entries.append({"resource": {
            "resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": "urn:uuid:7f1c8f0e-0000-4000-8000-000000000001"},
            "content": [{"attachment": {"contentType": "application/octet-stream", "data": b64(data)}}]},
            "request": {"method": "POST", "url": "DocumentReference"}})
    out = bapi.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, headers=FHIR)
    assert out.status_code == 200, out.text
    for entry, data in zip(out.json()["entry"][1:], payloads, strict=True):
        ref = entry["response"]["location"].split("/_history")[0]
        got = bapi.get(f"/{ref}/$binary-access-read", params={"path": "DocumentReference.content.attachment"})
        assert got.status_code == 200 and got.content == data


def test_made_up_internal_storage_reference_is_rejected(bapi: FhirApi, binary_server: ServerProcess  # noqa: F811
                                                        ) -> None:
    forged = f"{binary_server.url}/storage/{'a' * 36}/1?exp=4102444800&kid=k1&sig=forged"
    r = bapi.post("/DocumentReference", json={"resourceType": "DocumentReference", "status": "current",
                                              "content": [{"attachment": {"url": forged}}]}, headers=FHIR)
    assert r.status_code == 400 and "storage URL" in diagnostics(r)


def test_raw_media(bapi: FhirApi) -> None:  # noqa: F811
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(100_000)
    inline = create(bapi, {"resourceType": "Media", "status": "completed",
                           "content": {"contentType": "image/png", "data": b64(png[:1000])}})
    binary = bapi.post("/Binary", content=png, headers={"Content-Type": "image/png"}).json()
    backed = create(bapi, {"resourceType": "Media", "status": "completed",
                           "content": {"contentType": "image/png", "url": f"Binary/{binary['id']}"}})
    for media, data in ((inline, png[:1000]), (backed, png)):
        url = f"/Media/{media['id']}"
        raw = bapi.get(url, headers={"Accept": "image/png"})
        assert raw.status_code == 200 and raw.content == data and raw.headers["Content-Type"] == "image/png"
        assert raw.headers["Accept-Ranges"] == "bytes"
        ranged = bapi.get(url, headers={"Accept": "image/png", "Range": "bytes=0-7"})
        assert ranged.status_code == 206 and ranged.content == data[:8]
        forced = bapi.get(url, params={"_output": "data"}, headers={"Accept": "application/fhir+json"})
        assert forced.content == data
        resource = bapi.get(url, headers={"Accept": "application/fhir+json"})
        assert resource.json()["resourceType"] == "Media"
        assert bapi.get(url).json()["resourceType"] == "Media"
        # neither the content type nor FHIR JSON: nothing the client accepts (R4 format negotiation)
        assert bapi.get(url, headers={"Accept": "image/jpeg"}).status_code == 406


def test_bytes_missing_from_storage_are_a_clear_error(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", storage_mode="filesystem")
    with server.api() as api:
        doc = create(api, {"resourceType": "DocumentReference", "status": "current",
                           "content": [{"attachment": {"contentType": "image/jpeg"}}]})
        path = {"path": "DocumentReference.content.attachment"}
        r = api.post(f"/DocumentReference/{doc['id']}/$binary-access-write", params=path,
                     content=os.urandom(INLINE_MAX + 1), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
        shutil.rmtree(server.data_dir / "blobs")
        r = api.get(f"/DocumentReference/{doc['id']}/$binary-access-read", params=path)
        assert r.status_code in (404, 500, 503) and r.headers["Content-Type"].startswith("application/fhir+json")
        assert diagnostics(r)


def test_access_rules(binary_server: ServerProcess, bapi: FhirApi) -> None:  # noqa: F811
    doc = two_attachment_doc(bapi)
    reader = binary_server.create_client("reader", "system/DocumentReference.rs")
    token = binary_server.token(reader["client_id"], reader["client_secret"])
    with FhirApi(binary_server.base, headers={"Authorization": f"Bearer {token}"}) as ro:
        ok = ro.get(f"/DocumentReference/{doc['id']}/$binary-access-read",
                    params={"path": "DocumentReference.content.attachment"})
        assert ok.content == b"first attachment"
        denied = ro.post(f"/DocumentReference/{doc['id']}/$binary-access-write",
                         params={"path": "DocumentReference.content.attachment"}, content=b"x",
                         headers={"Content-Type": "text/plain"})
        assert denied.status_code == 403 and "DocumentReference" in diagnostics(denied)


def test_capability_statement_lists_the_operations(bapi: FhirApi) -> None:  # noqa: F811
    cs = bapi.get("/metadata").json()
    media = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Media")
    names = {op["name"] for op in media["operation"]}
    assert {"binary-access-read", "binary-access-write"} <= names
    assert "_output=data" in media["documentation"]
    definition = next(op["definition"] for op in media["operation"] if op["name"] == "binary-access-read")
    od = bapi.get(definition).json()
    assert od["resourceType"] == "OperationDefinition" and od["code"] == "binary-access-read"
    from fhirclient.models.operationdefinition import OperationDefinition

    for op in media["operation"]:
        parsed = OperationDefinition(bapi.get(op["definition"]).json(), strict=True)
        assert parsed.code == op["name"] and parsed.instance is True
