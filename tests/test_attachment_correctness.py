"""Attachments and the Binaries they name, in every storage mode on SQLite and PostgreSQL: transaction entries
in any order, versioned Binary references kept, inline data checked like urls, and $binary-access-write
always making a Binary."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.binary import bapi, binary_count, binary_server, database, pseudo_random, sha1_b64, storage_mode  # noqa: F401
from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json"}
SMALL = b"small attachment content"
LARGE = pseudo_random(150_000, seed=12)  # above INLINE_MAX_BYTES: moved out of JSON into the store


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def diagnostics(r: httpx.Response) -> str:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return str(body["issue"][0]["diagnostics"])


def upload(api: FhirApi, data: bytes, content_type: str = "text/plain") -> str:
    r = api.post("/Binary", content=data, headers={"Content-Type": content_type})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def read_attachment(api: FhirApi, ref: str, path: str) -> bytes:
    r = api.get(f"/{ref}/$binary-access-read", params={"path": path})
    assert r.status_code == 200, r.text
    return r.content


def storage_version(url: str) -> tuple[str, str, bool]:
    """(binary id, version, pinned) of a signed storage URL."""
    split = urlsplit(url)
    _, _, binary_id, version = split.path.split("/")
    return binary_id, version, parse_qs(split.query).get("pinned") == ["1"]


def entry_ids(answer: dict[str, Any]) -> list[str]:
    return [e["response"]["location"].split("/")[1] for e in answer["entry"]]


# -- 3. transaction entries in any order ------------------------------------------------------------
def test_transaction_attachment_naming_a_later_binary_entry(bapi: FhirApi) -> None:  # noqa: F811
    """The example: the DocumentReference comes first and names the Binary entry's urn:uuid."""
    for data in (SMALL, LARGE):
        r = bapi.post("", json=transaction(
            {"fullUrl": "urn:uuid:0c3d6f1e-6f7a-4a59-8a43-6d1a1c6e0001",
             "resource": {"resourceType": "DocumentReference", "status": "current", "content": [
                 {"attachment": {"url": "urn:uuid:0c3d6f1e-6f7a-4a59-8a43-6d1a1c6e0002", "title": "scan"}}]},
             "request": {"method": "POST", "url": "DocumentReference"}},
            {"fullUrl": "urn:uuid:0c3d6f1e-6f7a-4a59-8a43-6d1a1c6e0002",
             "resource": {"resourceType": "Binary", "contentType": "application/pdf", "data": b64(data)},
             "request": {"method": "POST", "url": "Binary"}}), headers=FHIR)
        assert r.status_code == 200, r.text
        doc_id, binary_id = entry_ids(r.json())
        stored = bapi.get(f"/DocumentReference/{doc_id}").json()["content"][0]["attachment"]
        assert stored["size"] == len(data) and stored["hash"] == sha1_b64(data)
        assert stored["contentType"] == "application/pdf" and stored["title"] == "scan"
        assert storage_version(stored["url"])[:2] == (binary_id, "1")
        assert read_attachment(bapi, f"DocumentReference/{doc_id}", "DocumentReference.content.attachment") == data
        # the answer's own entry shows the filled-in Attachment too
        answered = r.json()["entry"][0]["resource"]["content"][0]["attachment"]
        assert answered["size"] == len(data)


def test_transaction_order_never_matters_for_attachment_urls(bapi: FhirApi,  # noqa: F811
                                                             binary_server: ServerProcess) -> None:  # noqa: F811
    """The rule: a PUT Binary named by a POSTed resource (PUT runs after POST) even when listed first; a
    Binary whose securityContext names the resource that names it; and a contradicting size found only once
    every entry is written still refuses the whole transaction."""
    put_id = f"tx-put-{hashlib.sha1(str(id(bapi)).encode()).hexdigest()[:10]}-{binary_count(binary_server)}"
    r = bapi.post("", json=transaction(
        {"resource": {"resourceType": "Binary", "id": put_id, "contentType": "text/plain", "data": b64(SMALL)},
         "request": {"method": "PUT", "url": f"Binary/{put_id}"}},
        {"fullUrl": "urn:uuid:4f1c1a7e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Media", "status": "completed", "content": {"url": f"Binary/{put_id}"}},
         "request": {"method": "POST", "url": "Media"}},
        {"fullUrl": "urn:uuid:4f1c1a7e-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Binary", "contentType": "image/png", "data": b64(LARGE),
                      "securityContext": {"reference": "urn:uuid:4f1c1a7e-0000-4000-8000-000000000003"}},
         "request": {"method": "POST", "url": "Binary"}},
        {"fullUrl": "urn:uuid:4f1c1a7e-0000-4000-8000-000000000003",
         "resource": {"resourceType": "Patient", "photo": [{"url": "urn:uuid:4f1c1a7e-0000-4000-8000-000000000002"}]},
         "request": {"method": "POST", "url": "Patient"}}), headers=FHIR)
    assert r.status_code == 200, r.text
    _, media_id, photo_binary, patient_id = entry_ids(r.json())
    assert read_attachment(bapi, f"Media/{media_id}", "Media.content") == SMALL
    photo = bapi.get(f"/Patient/{patient_id}").json()["photo"][0]
    assert photo["size"] == len(LARGE) and photo["contentType"] == "image/png"
    assert storage_version(photo["url"])[0] == photo_binary
    assert bapi.get(f"/Binary/{photo_binary}").headers["X-Security-Context"] == f"Patient/{patient_id}"

    before = binary_count(binary_server)
    patients = bapi.get("/Patient", params={"_summary": "count"}).json()["total"]
    r = bapi.post("", json=transaction(
        {"resource": {"resourceType": "Patient", "photo": [
            {"url": "urn:uuid:4f1c1a7e-0000-4000-8000-000000000009", "size": 3}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:4f1c1a7e-0000-4000-8000-000000000009",
         "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": b64(SMALL)},
         "request": {"method": "POST", "url": "Binary"}}), headers=FHIR)
    assert r.status_code == 400 and "Patient.photo[0].size" in diagnostics(r)
    assert binary_count(binary_server) == before
    assert bapi.get("/Patient", params={"_summary": "count"}).json()["total"] == patients


# -- 4. versioned Binary references ------------------------------------------------------------------
def test_versioned_binary_reference_keeps_its_version(bapi: FhirApi) -> None:  # noqa: F811
    """The example: `Binary/{id}/_history/1` with version 1's true size and hash, after a version 2."""
    v1, v2 = LARGE, b"version two"
    bid = upload(bapi, v1, "application/pdf")
    assert bapi.put(f"/Binary/{bid}", content=v2, headers={"Content-Type": "application/pdf"}).status_code == 200
    r = bapi.post("/DocumentReference", json={"resourceType": "DocumentReference", "status": "current", "content": [
        {"attachment": {"url": f"Binary/{bid}/_history/1", "size": len(v1), "hash": sha1_b64(v1)}},
        {"attachment": {"url": f"Binary/{bid}"}}]}, headers=FHIR)
    assert r.status_code == 201, r.text
    doc_id = r.json()["id"]
    pinned, current = (c["attachment"] for c in bapi.get(f"/DocumentReference/{doc_id}").json()["content"])
    assert storage_version(pinned["url"]) == (bid, "1", True)
    assert storage_version(current["url"]) == (bid, "2", False)
    assert (pinned["size"], current["size"]) == (len(v1), len(v2))
    assert httpx.get(pinned["url"]).content == v1 and httpx.get(current["url"]).content == v2
    ref = f"DocumentReference/{doc_id}"
    assert read_attachment(bapi, ref, "DocumentReference.content[0].attachment") == v1
    assert read_attachment(bapi, ref, "DocumentReference.content[1].attachment") == v2


def test_versioned_references_are_checked_and_survive_a_read_modify_write(bapi: FhirApi) -> None:  # noqa: F811
    """The rule: the named version is the one checked (size, hash, existence) and signed, in every url
    shape naming it; writing back what a read gave keeps the version even after the Binary changes."""
    v1, v2 = b"first version", b"second version, longer"
    bid = upload(bapi, v1)
    bapi.put(f"/Binary/{bid}", content=v2, headers={"Content-Type": "text/plain"})
    for url in (f"Binary/{bid}/_history/1", f"{bapi.base}/Binary/{bid}/_history/1"):
        wrong_size = bapi.post("/Patient", json={"resourceType": "Patient", "photo": [{"url": url, "size": len(v2)}]},
                               headers=FHIR)
        assert wrong_size.status_code == 400 and "Patient.photo[0].size" in diagnostics(wrong_size)
        wrong_hash = bapi.post("/Patient", json={"resourceType": "Patient", "photo": [
            {"url": url, "hash": sha1_b64(v2)}]}, headers=FHIR)
        assert wrong_hash.status_code == 400 and "Patient.photo[0].hash" in diagnostics(wrong_hash)
    missing = bapi.post("/Patient", json={"resourceType": "Patient", "photo": [{"url": f"Binary/{bid}/_history/7"}]},
                        headers=FHIR)
    assert missing.status_code == 400 and f"Binary/{bid}/_history/7" in diagnostics(missing)

    created = bapi.post("/Patient", json={"resourceType": "Patient", "photo": [{"url": f"Binary/{bid}/_history/1"}]},
                        headers=FHIR).json()
    read = bapi.get(f"/Patient/{created['id']}").json()  # photo url: a signed URL pinned to version 1
    bapi.put(f"/Binary/{bid}", content=b"third", headers={"Content-Type": "text/plain"})
    read["active"] = True
    assert bapi.put(f"/Patient/{created['id']}", json=read, headers=FHIR).status_code == 200
    photo = bapi.get(f"/Patient/{created['id']}").json()["photo"][0]
    assert storage_version(photo["url"]) == (bid, "1", True) and photo["size"] == len(v1)
    assert read_attachment(bapi, f"Patient/{created['id']}", "Patient.photo") == v1


# -- 5. inline data checked ----------------------------------------------------------------------------
def test_inline_data_with_a_contradicting_size_or_hash_is_refused(bapi: FhirApi,  # noqa: F811
                                                                  binary_server: ServerProcess) -> None:  # noqa: F811
    """The example (a size that contradicts `data`) and the rule: size and hash of every Attachment with
    data, small or moved out into a Binary, are checked (400 naming the element) or filled in; a refused
    write leaves no Binary behind."""
    before = binary_count(binary_server)
    for data in (SMALL, LARGE):
        for field, value in (("size", len(data) + 1), ("hash", sha1_b64(b"other"))):
            r = bapi.post("/DocumentReference", json={"resourceType": "DocumentReference", "status": "current",
                                                      "content": [{"attachment": {"contentType": "text/plain"}},
                                                                  {"attachment": {"contentType": "text/plain",
                                                                                  "data": b64(data), field: value}}]},
                          headers=FHIR)
            assert r.status_code == 400, r.text
            assert f"DocumentReference.content[1].attachment.{field}" in diagnostics(r)
            assert r.json()["issue"][0]["expression"] == [f"DocumentReference.content[1].attachment.{field}"]
    assert binary_count(binary_server) == before
    for data in (SMALL, LARGE):
        filled = bapi.post("/Patient", json={"resourceType": "Patient", "photo": [
            {"contentType": "image/png", "data": b64(data)}]}, headers=FHIR)
        assert filled.status_code == 201, filled.text
        photo = filled.json()["photo"][0]
        assert photo["size"] == len(data) and photo["hash"] == sha1_b64(data)
        agreeing = bapi.post("/Patient", json={"resourceType": "Patient", "photo": [
            {"contentType": "image/png", "data": b64(data), "size": len(data), "hash": sha1_b64(data)}]}, headers=FHIR)
        assert agreeing.status_code == 201, agreeing.text


# -- 6. $binary-access-write always makes a Binary ------------------------------------------------------
def test_binary_access_write_of_small_content_gives_a_url(bapi: FhirApi,  # noqa: F811
                                                          binary_server: ServerProcess) -> None:  # noqa: F811
    """The example: a few bytes written into Patient.photo end up as a Binary the Attachment's url names,
    so `<img src=attachment.url>` works; the rule holds for any size and replaces earlier inline data."""
    created = bapi.post("/Patient", json={"resourceType": "Patient", "photo": [
        {"contentType": "image/png", "data": b64(b"old inline"), "title": "face"}]}, headers=FHIR).json()
    for content in (b"\x89PNG tiny", LARGE):
        before = binary_count(binary_server)
        r = bapi.post(f"/Patient/{created['id']}/$binary-access-write", params={"path": "Patient.photo[0]"},
                      content=content, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        photo = r.json()["photo"][0]
        assert "data" not in photo and photo["title"] == "face"
        assert photo["size"] == len(content) and photo["hash"] == sha1_b64(content)
        assert "/storage/" in photo["url"] and httpx.get(photo["url"]).content == content
        assert binary_count(binary_server) == before + 1
        binary_id = storage_version(photo["url"])[0]
        assert bapi.get(f"/Binary/{binary_id}").headers["X-Security-Context"] == f"Patient/{created['id']}"
        assert read_attachment(bapi, f"Patient/{created['id']}", "Patient.photo[0]") == content
