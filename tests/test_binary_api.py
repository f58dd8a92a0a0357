"""Binary over real HTTP in every storage mode, on SQLite and PostgreSQL: uploads, reads, negotiation,
versions and the INLINE_MAX_BYTES rule."""

from __future__ import annotations

import base64
import gzip
import hashlib

import httpx
import pytest

from tests.support.binary import blob_ids_of, blob_rows, pseudo_random, stored_keys, wait_until
from tests.support.server import FhirApi, ServerProcess

SMALL = pseudo_random(1000, seed=1)  # stays inline in every mode
LARGE = pseudo_random(300_000, seed=2)  # above INLINE_MAX_BYTES (64 KiB): goes to the configured store
R4_BINARY_ELEMENTS = {"resourceType", "id", "meta", "implicitRules", "language", "contentType",
                      "securityContext", "data"}
R4_META_ELEMENTS = {"id", "extension", "versionId", "lastUpdated", "source", "profile", "security", "tag"}


def upload(api: FhirApi, data: bytes, content_type: str = "application/pdf", **headers: str) -> dict:
    r = api.post("/Binary", content=data, headers={"Content-Type": content_type, **headers})
    assert r.status_code == 201, r.text
    return r.json()


def fhir_json_binary(data: bytes, content_type: str = "image/png") -> dict:
    return {"resourceType": "Binary", "contentType": content_type, "data": base64.b64encode(data).decode()}


@pytest.mark.parametrize("data", [SMALL, LARGE, b""], ids=["small", "large", "empty"])
def test_raw_round_trip_is_byte_identical_with_headers(bapi: FhirApi, data: bytes) -> None:
    r = bapi.post("/Binary", content=data, headers={"Content-Type": "application/pdf",
                                                     "X-Security-Context": "Patient/123"})
    assert r.status_code == 201
    body = r.json()
    assert "data" not in body
    assert body["contentType"] == "application/pdf"
    assert body["securityContext"] == {"reference": "Patient/123"}
    assert r.headers["Location"] == f"{bapi.base}/Binary/{body['id']}/_history/1"
    assert r.headers["ETag"] == 'W/"1"' and r.headers["Last-Modified"].endswith("GMT")

    got = bapi.get(f"/Binary/{body['id']}")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["Content-Type"] == "application/pdf"
    assert got.headers["Content-Length"] == str(len(data))
    assert got.headers["Accept-Ranges"] == "bytes"
    assert got.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert got.headers["Last-Modified"] == r.headers["Last-Modified"]
    assert got.headers["Cache-Control"] == "private"
    assert got.headers["X-Security-Context"] == "Patient/123"

    head = bapi.head(f"/Binary/{body['id']}")
    assert head.status_code == 200 and head.content == b""
    for name in ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Accept-Ranges", "X-Security-Context"):
        assert head.headers[name] == got.headers[name]


def test_missing_content_type_is_octet_stream_and_chunked_upload_works(bapi: FhirApi) -> None:
    def chunks():  # no Content-Length: chunked transfer encoding
        for i in range(0, len(LARGE), 7000):
            yield LARGE[i:i + 7000]

    r = bapi.post("/Binary", content=chunks(), headers={"Content-Type": ""})
    assert r.status_code == 201
    assert r.json()["contentType"] == "application/octet-stream"
    got = bapi.get(f"/Binary/{r.json()['id']}")
    assert got.content == LARGE and got.headers["Content-Type"] == "application/octet-stream"


def test_file_name_is_kept_from_query_or_content_disposition(bapi: FhirApi) -> None:
    a = upload(bapi, SMALL, "application/pdf", **{"Content-Disposition": 'attachment; filename="report 1.pdf"'})
    r = bapi.get(f"/Binary/{a['id']}")
    assert r.headers["Content-Disposition"] == 'attachment; filename="report 1.pdf"'
    b = bapi.post("/Binary", params={"_filename": "Röntgen.png"}, content=LARGE,
                  headers={"Content-Type": "image/png"}).json()
    r = bapi.get(f"/Binary/{b['id']}")
    assert "filename*=UTF-8''R%C3%B6ntgen.png" in r.headers["Content-Disposition"]
    # an image is shown by a browser (inline) and saved under its name; it was sent as a download
    assert r.headers["Content-Disposition"].startswith("inline; filename=")
    # the name lives in an R4-valid place: an extension on Binary.meta
    resource = bapi.get(f"/Binary/{b['id']}", headers={"Accept": "application/fhir+json"}).json()
    assert set(resource) <= R4_BINARY_ELEMENTS and set(resource["meta"]) <= R4_META_ELEMENTS
    assert resource["meta"]["extension"][0]["valueString"] == "Röntgen.png"
    # a raw UTF-8 name in Content-Disposition (as curl and browsers send it) is UTF-8, not Latin-1
    raw = bapi.post("/Binary", content=SMALL, headers={
        "Content-Type": "application/pdf",
        "Content-Disposition": 'attachment; filename="Befund Müller.pdf"'.encode()}).json()
    named = bapi.get(f"/Binary/{raw['id']}", headers={"Accept": "application/fhir+json"}).json()
    assert named["meta"]["extension"][0]["valueString"] == "Befund Müller.pdf"


def test_gzip_content_encoding_is_decoded_and_others_refused(bapi: FhirApi) -> None:
    r = bapi.post("/Binary", content=gzip.compress(LARGE), headers={"Content-Type": "text/plain",
                                                                     "Content-Encoding": "gzip"})
    assert r.status_code == 201
    assert bapi.get(f"/Binary/{r.json()['id']}").content == LARGE
    r = bapi.post("/Binary", content=b"x", headers={"Content-Type": "text/plain", "Content-Encoding": "compress"})
    assert r.status_code == 415 and "compress" in r.json()["issue"][0]["diagnostics"]
    r = bapi.post("/Binary", content=b"not gzip at all", headers={"Content-Type": "text/plain",
                                                                  "Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
def test_fhir_json_binary_round_trip(bapi: FhirApi, data: bytes) -> None:
    resource = {**fhir_json_binary(data), "securityContext": {"reference": "Patient/9"}}
    r = bapi.post("/Binary", json=resource, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201
    bid = r.json()["id"]
    raw = bapi.get(f"/Binary/{bid}")
    assert raw.content == data and raw.headers["Content-Type"] == "image/png"
    assert raw.headers["X-Security-Context"] == "Patient/9"
    as_json = bapi.get(f"/Binary/{bid}", headers={"Accept": "application/fhir+json"})
    assert as_json.headers["Content-Type"].startswith("application/fhir+json")
    assert as_json.headers["ETag"] == 'W/"1"'
    got = as_json.json()
    assert base64.b64decode(got["data"]) == data
    assert got["securityContext"] == {"reference": "Patient/9"}
    assert set(got) <= R4_BINARY_ELEMENTS and set(got["meta"]) <= R4_META_ELEMENTS
    assert int(as_json.headers["Content-Length"]) == len(as_json.content)


def test_json_body_that_is_not_a_binary_is_content(bapi: FhirApi) -> None:
    patient = b'{"resourceType":"Patient","active":true}'
    r = bapi.post("/Binary", content=patient, headers={"Content-Type": "application/json"})
    assert r.status_code == 201 and r.json()["contentType"] == "application/json"
    got = bapi.get(f"/Binary/{r.json()['id']}", headers={"Accept": "*/*"})
    assert got.content == patient
    # A FHIR JSON Accept asks for the Binary resource, even when it equals the stored type (R4).
    as_resource = bapi.get(f"/Binary/{r.json()['id']}", headers={"Accept": "application/json"})
    assert base64.b64decode(as_resource.json()["data"]) == patient


@pytest.mark.parametrize("data, problem", [
    ("AAAA!AAA", "character '!'"),
    ("AAAAA", "multiple of 4"),
    ("AA=A", "padding"),
    (12, "base64"),
])
def test_invalid_base64_is_400_naming_the_problem(bapi: FhirApi, data: object, problem: str) -> None:
    r = bapi.post("/Binary", json={"resourceType": "Binary", "contentType": "text/plain", "data": data},
                  headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400
    assert problem in r.json()["issue"][0]["diagnostics"]


def test_binary_json_without_content_type_is_400(bapi: FhirApi) -> None:
    r = bapi.post("/Binary", json={"resourceType": "Binary", "data": "AAAA"},
                  headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and "contentType" in r.json()["issue"][0]["diagnostics"]


def test_bad_security_context_header_is_400(bapi: FhirApi) -> None:
    r = bapi.post("/Binary", content=b"x", headers={"Content-Type": "text/plain",
                                                    "X-Security-Context": "not a reference"})
    assert r.status_code == 400 and "X-Security-Context" in r.json()["issue"][0]["diagnostics"]


RAW, JSON = "raw", "json"


@pytest.mark.parametrize("accept, query, expected", [
    (None, "", RAW),
    ("*/*", "", RAW),
    ("image/*", "", RAW),
    ("image/png", "", RAW),
    ("application/fhir+json", "", JSON),
    ("application/json", "", JSON),
    ("application/fhir+json, */*;q=0.1", "", JSON),
    ("*/*, application/fhir+json;q=0.5", "", RAW),
    ("image/png;q=0.2, application/fhir+json", "", JSON),
    (None, "?_format=json", JSON),
    ("*/*", "?_format=application/fhir+json", JSON),
    # _format overrides Accept (R4 http.html#mime-type), even an Accept equal to the stored type
    ("image/png", "?_format=json", JSON),
])
def test_content_negotiation_table(bapi: FhirApi, accept: str | None, query: str, expected: str) -> None:
    bid = upload(bapi, SMALL, "image/png")["id"]
    headers = {"Accept": accept} if accept else {}
    r = bapi.get(f"/Binary/{bid}{query}", headers=headers)
    assert r.status_code == 200
    if expected == RAW:
        assert r.content == SMALL and r.headers["Content-Type"] == "image/png"
    else:
        assert r.headers["Content-Type"].startswith("application/fhir+json")
        assert base64.b64decode(r.json()["data"]) == SMALL


def test_fhir_json_accept_gives_the_resource_even_for_a_fhir_json_binary(bapi: FhirApi) -> None:
    """A FHIR document stored as a file: Accept application/fhir+json asks for the Binary resource (R4);
    the stored bytes come with any other Accept."""
    stored = b'{"resourceType": "Bundle", "type": "document"}'
    bid = upload(bapi, stored, "application/fhir+json")["id"]
    for accept in ("application/fhir+json", "application/json", "application/fhir+json;q=0.9, text/plain;q=0.1"):
        r = bapi.get(f"/Binary/{bid}", headers={"Accept": accept})
        assert r.json()["resourceType"] == "Binary", accept
        assert base64.b64decode(r.json()["data"]) == stored
    for accept in ("*/*", "application/octet-stream", None):
        r = bapi.get(f"/Binary/{bid}", headers={"Accept": accept} if accept else {})
        assert r.content == stored and r.headers["Content-Type"] == "application/fhir+json", accept


def test_versions_keep_their_bytes_and_metadata_update_reuses_the_blob(
        bapi: FhirApi, binary_server: ServerProcess) -> None:
    first = upload(bapi, LARGE, "application/pdf")
    bid = first["id"]
    second_bytes = pseudo_random(200_000, seed=3)
    r = bapi.put(f"/Binary/{bid}", content=second_bytes, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    # metadata only: a JSON Binary without data keeps the content of the current version
    r = bapi.put(f"/Binary/{bid}", json={"resourceType": "Binary", "id": bid, "contentType": "application/pdf",
                                         "securityContext": {"reference": "Patient/5"}},
                 headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "3"

    assert bapi.get(f"/Binary/{bid}/_history/1").content == LARGE
    assert bapi.get(f"/Binary/{bid}/_history/2").content == second_bytes
    current = bapi.get(f"/Binary/{bid}")
    assert current.content == second_bytes and current.headers["X-Security-Context"] == "Patient/5"
    blobs = blob_ids_of(binary_server, bid)
    if binary_server.env["FHIRVAULT_STORAGE_MODE"] == "inline":
        assert blobs == [None, None, None]
    else:
        assert blobs[0] != blobs[1] and blobs[2] == blobs[1], "the metadata update must reuse the blob"
        registered = {row[0] for row in blob_rows(binary_server)}
        assert {blobs[0], blobs[1]} <= registered


def test_put_creates_with_given_id_and_if_match(bapi: FhirApi) -> None:
    bid = f"bin-{hashlib.sha1(LARGE).hexdigest()[:8]}-{id(bapi)}"
    r = bapi.put(f"/Binary/{bid}", content=SMALL, headers={"Content-Type": "text/plain"})
    assert r.status_code == 201
    r = bapi.put(f"/Binary/{bid}", content=LARGE, headers={"Content-Type": "text/plain", "If-Match": 'W/"7"'})
    assert r.status_code == 412
    assert bapi.get(f"/Binary/{bid}").content == SMALL


def test_delete_keeps_old_versions_readable(bapi: FhirApi) -> None:
    bid = upload(bapi, LARGE)["id"]
    assert bapi.delete(f"/Binary/{bid}").status_code == 204
    assert bapi.get(f"/Binary/{bid}").status_code == 410
    assert bapi.get(f"/Binary/{bid}/_history/1").content == LARGE
    assert bapi.get(f"/Binary/{bid}/_history/2").status_code == 410
    assert bapi.get("/Binary/no-such-binary").status_code == 404


def test_large_attachment_data_moves_out_into_a_binary(bapi: FhirApi, binary_server: ServerProcess) -> None:
    doc = {"resourceType": "DocumentReference", "status": "current", "content": [
        {"attachment": {"contentType": "text/plain", "data": base64.b64encode(SMALL).decode(), "title": "small"}},
        {"attachment": {"contentType": "application/pdf", "data": base64.b64encode(LARGE).decode(),
                        "title": "scan"}},
    ]}
    r = bapi.post("/DocumentReference", json=doc, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201
    saved = r.json()
    small, large = (c["attachment"] for c in saved["content"])
    assert base64.b64decode(small["data"]) == SMALL
    if binary_server.env["FHIRVAULT_STORAGE_MODE"] == "inline":
        assert base64.b64decode(large["data"]) == LARGE
        return
    assert "data" not in large
    # Stored as Binary/{id}; reads sign it into a storage URL of that Binary's current version.
    assert "/storage/" in large["url"]
    binary_ref = "Binary/" + large["url"].split("/storage/")[1].split("/")[0]
    assert large["size"] == len(LARGE)
    assert large["hash"] == base64.b64encode(hashlib.sha1(LARGE).digest()).decode()
    assert large["contentType"] == "application/pdf" and large["title"] == "scan"
    got = bapi.get(f"/{binary_ref}")
    assert got.content == LARGE and got.headers["Content-Type"] == "application/pdf"
    assert got.headers["X-Security-Context"] == f"DocumentReference/{saved['id']}"
    # and the read of the resource shows the same
    again = bapi.get(f"/DocumentReference/{saved['id']}").json()
    assert again["content"][1]["attachment"]["url"].split("?")[0] == large["url"].split("?")[0]


def test_invalid_base64_in_an_attachment_is_400_and_nothing_written(
        bapi: FhirApi, binary_server: ServerProcess) -> None:
    keys_before = stored_keys(binary_server)
    doc = {"resourceType": "Patient", "photo": [{"contentType": "image/png",
                                                 "data": base64.b64encode(LARGE).decode()},
                                                {"contentType": "image/png", "data": "not*base64"}]}
    r = bapi.post("/Patient", json=doc, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.photo[1].data"]
    assert stored_keys(binary_server) == keys_before


def test_attachment_in_a_rolled_back_transaction_leaves_no_bytes(
        bapi: FhirApi, binary_server: ServerProcess) -> None:
    keys_before = stored_keys(binary_server)
    rows_before = blob_rows(binary_server)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Media", "status": "completed",
                      "content": {"contentType": "image/png", "data": base64.b64encode(LARGE).decode()}},
         "request": {"method": "POST", "url": "Media"}},
        {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Patient/y"}},
    ]}
    r = bapi.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400
    assert blob_rows(binary_server) == rows_before
    # the rollback removes a file in the background
    wait_until(lambda: stored_keys(binary_server) == keys_before, "the rolled back blob's bytes to go")


def test_range_requests(bapi: FhirApi) -> None:
    bid = upload(bapi, LARGE, "video/mp4")["id"]
    url = f"/Binary/{bid}"
    etag = bapi.head(url).headers["ETag"]

    one = bapi.get(url, headers={"Range": "bytes=100-199"})
    assert one.status_code == 206 and one.content == LARGE[100:200]
    assert one.headers["Content-Range"] == f"bytes 100-199/{len(LARGE)}"
    assert one.headers["Content-Length"] == "100" and one.headers["Content-Type"] == "video/mp4"

    suffix = bapi.get(url, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == LARGE[-10:]
    across = bapi.get(url, headers={"Range": "bytes=65000-"})  # crosses storage chunk boundaries
    assert across.content == LARGE[65000:]

    multi = bapi.get(url, headers={"Range": "bytes=0-4,1048570-,299990-"})
    assert multi.status_code == 206
    ctype = multi.headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=")[1]
    parts = multi.content.split(f"--{boundary}".encode())[1:-1]
    assert len(parts) == 2  # the unsatisfiable one is left out
    assert parts[0].endswith(b"\r\n\r\n" + LARGE[0:5] + b"\r\n")
    assert f"Content-Range: bytes 299990-299999/{len(LARGE)}".encode() in parts[1]
    assert parts[1].endswith(LARGE[299990:] + b"\r\n")
    assert int(multi.headers["Content-Length"]) == len(multi.content)

    unsatisfiable = bapi.get(url, headers={"Range": f"bytes={len(LARGE)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(LARGE)}"

    assert bapi.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    stale = bapi.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.content == LARGE
    assert bapi.get(url, headers={"Range": "bytes=0-9", "If-Range": f"W/{etag}"}).status_code == 200

    cached = bapi.get(url, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["ETag"] == etag
    assert bapi.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    head = bapi.head(url, headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.content == b"" and head.headers["Content-Length"] == "10"


def test_prefer_return_operation_outcome_on_a_raw_upload(bapi: FhirApi) -> None:
    """`Prefer: return=OperationOutcome` answers a raw Binary upload with an OperationOutcome, as it does
    every other write; the Binary came back instead."""
    r = bapi.post("/Binary", content=SMALL, headers={"Content-Type": "text/plain",
                                                     "Prefer": "return=OperationOutcome"})
    assert r.status_code == 201 and r.json()["resourceType"] == "OperationOutcome", r.text
    bid = r.headers["Location"].split("/Binary/")[1].split("/")[0]
    assert bid in r.json()["issue"][0]["diagnostics"]
    r = bapi.put(f"/Binary/{bid}", content=SMALL + b"!", headers={"Content-Type": "text/plain",
                                                                  "Prefer": "return=OperationOutcome"})
    assert r.status_code == 200 and "updated" in r.json()["issue"][0]["diagnostics"]



@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
def test_every_binary_read_answers_conditional_requests(bapi: FhirApi, data: bytes) -> None:
    """The JSON form of a Binary read answered 200 with all of its base64 even to its own ETag, and
    If-Modified-Since was ignored on raw, JSON and signed-URL reads: each is now a conditional read (R4
    http.html#cread) answering 304. A signed URL, which needs no token, no longer tells the Binary's
    securityContext (the patient) in X-Security-Context."""
    created = bapi.post("/Binary", content=data, headers={"Content-Type": "application/pdf",
                                                           "X-Security-Context": "Patient/cond-123"})
    bid, signed = created.json()["id"], created.links["alternate"]["url"]
    raw = bapi.get(f"/Binary/{bid}")
    assert raw.status_code == 200 and raw.headers["x-security-context"] == "Patient/cond-123"
    as_json = {"Accept": "application/fhir+json"}
    first = bapi.get(f"/Binary/{bid}", headers=as_json)
    assert first.status_code == 200 and first.headers["etag"] == 'W/"1"'
    modified = first.headers["last-modified"]
    for headers in ({"If-None-Match": 'W/"1"'}, {"If-Modified-Since": modified}):
        for path in (f"/Binary/{bid}", f"/Binary/{bid}/_history/1"):
            r = bapi.get(path, headers={**as_json, **headers})
            assert r.status_code == 304 and r.content == b"", (path, headers, r.status_code)
    assert bapi.get(f"/Binary/{bid}", headers={**as_json, "If-None-Match": 'W/"2"'}).status_code == 200
    assert bapi.get(f"/Binary/{bid}", headers={"If-Modified-Since": modified}).status_code == 304
    earlier = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert bapi.get(f"/Binary/{bid}", headers={"If-Modified-Since": earlier}).content == data
    with httpx.Client(timeout=60) as browser:
        fresh = browser.get(signed)
        assert fresh.status_code == 200 and fresh.content == data
        assert "x-security-context" not in fresh.headers
        again = browser.get(signed, headers={"If-Modified-Since": fresh.headers["last-modified"]})
        assert again.status_code == 304 and "x-security-context" not in again.headers
        # If-None-Match decides when both are sent (RFC 9110 13.2.2)
        assert browser.get(signed, headers={"If-Modified-Since": fresh.headers["last-modified"],
                                            "If-None-Match": '"other"'}).status_code == 200


def test_binaries_written_through_bundles_follow_the_binary_rules(bapi: FhirApi, binary_server: ServerProcess,
                                                                  storage_mode: str) -> None:
    """A transaction or batch PUT of a Binary without `data` wrote a version with no content (the bytes were
    lost to every read but vread), and `data` above INLINE_MAX_BYTES in a Bundle stayed inline in the row.
    Bundle entries now write Binaries as a Binary written alone does."""
    large_id = upload(bapi, LARGE)["id"]
    small_id = upload(bapi, SMALL)["id"]
    for kind in ("transaction", "batch"):
        r = bapi.post("", json={"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": {"resourceType": "Binary", "id": rid, "contentType": "text/plain"},
             "request": {"method": "PUT", "url": f"Binary/{rid}"}} for rid in (large_id, small_id)]})
        assert r.status_code == 200, r.text
        assert all(e["response"]["status"].startswith("200") for e in r.json()["entry"]), r.text
    for rid, data in ((large_id, LARGE), (small_id, SMALL)):
        got = bapi.get(f"/Binary/{rid}")
        assert got.content == data and got.headers["content-type"].startswith("text/plain"), rid
    created = bapi.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c2b9e-2f0e-4c55-9d55-111111111111",
         "resource": fhir_json_binary(LARGE, "application/pdf"), "request": {"method": "POST", "url": "Binary"}}]})
    assert created.status_code == 200, created.text
    new_id = created.json()["entry"][0]["response"]["location"].split("/")[1]
    assert bapi.get(f"/Binary/{new_id}").content == LARGE
    # in a blob, as a Binary uploaded alone: not inline in the row (inline mode keeps every content inline)
    assert (blob_ids_of(binary_server, new_id) == [None]) == (storage_mode == "inline")
