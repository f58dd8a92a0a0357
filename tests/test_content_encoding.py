"""Content-Encoding on every request body, over real HTTP: gzip, deflate and br decoded for any endpoint,
other codings refused with 415, and decoded sizes held to the limits (a zip bomb is 413)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable

import brotli
import httpx

from tests.support.server import FhirApi, ServerProcess

PATIENT = json.dumps({"resourceType": "Patient", "name": [{"family": "Encoded"}]}).encode()
MiB = 1024 * 1024


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # HTTP's deflate: the zlib format
    "br": brotli.compress,
}


def post_patient(api: FhirApi, body: bytes, coding: str) -> httpx.Response:
    return api.post("/Patient", content=body, headers={"Content-Type": "application/fhir+json",
                                                       "Content-Encoding": coding})


def test_gzipped_json_creates_a_patient(api: FhirApi) -> None:
    """The example: POST /Patient with a gzip-encoded JSON body (it used to be 400 "not UTF-8")."""
    r = post_patient(api, gzip.compress(PATIENT), "gzip")
    assert r.status_code == 201, r.text
    assert api.get(f"/Patient/{r.json()['id']}").json()["name"][0]["family"] == "Encoded"


def test_every_supported_coding_on_every_kind_of_body(api: FhirApi, server: ServerProcess) -> None:
    """The rule: each coding, a raw DEFLATE stream sent as `deflate`, and codings stacked in the order
    applied, on resources, Bundles, Binary, $binary-access-write and the token endpoint's form."""
    for coding, encode in [*CODINGS.items(), ("deflate", raw_deflate),
                           ("gzip, br", lambda b: brotli.compress(gzip.compress(b)))]:
        r = post_patient(api, encode(PATIENT), coding)
        assert r.status_code == 201, (coding, r.text)
        bundle = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]}).encode()
        r = api.post("", content=encode(bundle), headers={"Content-Type": "application/fhir+json",
                                                          "Content-Encoding": coding})
        assert r.status_code == 200 and r.json()["type"] == "transaction-response", (coding, r.text)
        r = api.post("/Binary", content=encode(b"raw bytes " * 1000),
                     headers={"Content-Type": "text/plain", "Content-Encoding": coding})
        assert r.status_code == 201 and api.get(f"/Binary/{r.json()['id']}").content == b"raw bytes " * 1000
        media = api.post("/Media", json={"resourceType": "Media", "status": "completed",
                                         "content": {"contentType": "text/plain"}})
        r = api.post(f"/Media/{media.json()['id']}/$binary-access-write", params={"path": "Media.content"},
                     content=encode(b"written"), headers={"Content-Type": "text/plain", "Content-Encoding": coding})
        assert r.status_code == 200, (coding, r.text)
        assert api.get(f"/Media/{media.json()['id']}/$binary-access-read",
                       params={"path": "Media.content"}).content == b"written"
    creds = json.loads((server.data_dir / "admin-client.json").read_text())
    form = httpx.QueryParams({"grant_type": "client_credentials", **creds}).__str__().encode()
    r = httpx.post(f"{server.url}/oauth2/token", content=gzip.compress(form), headers={
        "Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["access_token"]


def test_unknown_codings_are_415_and_bad_encoded_bodies_400(api: FhirApi) -> None:
    before = api.get("/Patient", params={"_summary": "count"}).json()["total"]
    for coding in ("compress", "zstd", "gzip, compress"):
        r = post_patient(api, PATIENT, coding)
        assert r.status_code == 415, coding
        assert coding.split(", ")[-1] in r.json()["issue"][0]["diagnostics"]
        assert "gzip" in r.headers["Accept-Encoding"]
    for coding, body in [("gzip", b"not gzip"), ("gzip", gzip.compress(PATIENT)[:-12]), ("br", b"\xff\xff"),
                         ("deflate", zlib.compress(PATIENT)[:-6])]:
        r = post_patient(api, body, coding)
        assert r.status_code == 400, (coding, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["diagnostics"].startswith("The deflate-encoded request body")
    assert api.get("/Patient", params={"_summary": "count"}).json()["total"] == before


def test_zip_bombs_are_413_against_the_decoded_limits(server_factory: Callable[..., ServerProcess]) -> None:
    """Small encoded bodies that decode past MAX_JSON_BYTES (JSON) or MAX_BINARY_BYTES (content) are 413,
    for every coding, and leave nothing behind."""
    server = server_factory("sqlite", max_json_bytes=MiB, max_binary_bytes=2 * MiB)
    zeros = bytes(4 * MiB)
    padded = PATIENT[:-1] + b',"text":{"status":"generated","div":"' + b" " * (2 * MiB) + b'"}}'
    with server.api() as api:
        for coding, encode in CODINGS.items():
            assert len(encode(zeros)) < 64 * 1024
            r = post_patient(api, encode(padded), coding)
            assert r.status_code == 413 and "over the limit" in r.json()["issue"][0]["diagnostics"], coding
            r = api.post("/Binary", content=encode(zeros), headers={"Content-Type": "application/octet-stream",
                                                                    "Content-Encoding": coding})
            assert r.status_code == 413, coding
        assert api.get("/Patient", params={"_summary": "count"}).json()["total"] == 0
        assert api.get("/Binary", params={"_summary": "count"}).json()["total"] == 0


def test_gzip_members_are_all_decoded_and_bytes_after_the_end_refused(api: FhirApi) -> None:
    """A gzip body of several members (RFC 1952 2.2: `cat a.gz b.gz`) is stored whole, not cut after the
    first member; bytes after the end of a stream that are not another member are 400, and nothing is
    stored (they used to be dropped silently)."""
    first, second = bytes(range(256)) * 800, b"second member " * 20000  # each spans several body pieces
    r = api.post("/Binary", content=gzip.compress(first) + gzip.compress(second),
                 headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
    assert r.status_code == 201, r.text
    assert api.get(f"/Binary/{r.json()['id']}").content == first + second
    before = api.get("/Binary", params={"_summary": "count"}).json()["total"]
    for coding, body in [("gzip", gzip.compress(b"hello") + b"junk"), ("deflate", zlib.compress(b"hello") + b"junk"),
                         ("deflate", raw_deflate(b"hello") + b"junk"), ("gzip", gzip.compress(first) + bytes(1000))]:
        r = api.post("/Binary", content=body, headers={"Content-Type": "text/plain", "Content-Encoding": coding})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", (coding, r.text)
    assert api.get("/Binary", params={"_summary": "count"}).json()["total"] == before
