"""Format negotiation over real HTTP (R4 http.html, Content Types): _format, Accept, 406, 415, _pretty."""

from __future__ import annotations

import gzip
import json
import time

import httpx
import pytest

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}


def patient(api: FhirApi) -> str:
    r = api.post("/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=FHIR)
    assert r.status_code == 201
    rid: str = r.json()["id"]
    return rid


def assert_406(r: httpx.Response) -> None:
    assert r.status_code == 406, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "application/fhir+json" in body["issue"][0]["diagnostics"]  # names what is produced


@pytest.mark.parametrize("fmt", ["json", "application/json", "application/fhir+json", "application/json+fhir",
                                 "application/fhir+json;fhirVersion=4.0", "application/fhir json"])
def test_format_values_that_are_served(api: FhirApi, fmt: str) -> None:
    rid = patient(api)
    r = api.get(f"/Patient/{rid}", params={"_format": fmt})
    assert r.status_code == 200 and r.json()["id"] == rid
    assert r.headers["Content-Type"].startswith("application/fhir+json")


@pytest.mark.parametrize("fmt", ["xml", "text/xml", "application/xml", "application/fhir+xml", "ttl",
                                 "application/fhir+turtle", "html", "application/fhir+json;fhirVersion=3.0",
                                 "yaml"])
def test_format_values_not_produced_are_406(api: FhirApi, fmt: str) -> None:
    rid = patient(api)
    assert_406(api.get(f"/Patient/{rid}", params={"_format": fmt}))
    assert_406(api.get("/Patient", params={"_format": fmt}))
    assert_406(api.get("/metadata", params={"_format": fmt}))


@pytest.mark.parametrize("accept", ["application/fhir+xml", "application/fhir+json; fhirVersion=3.0",
                                    "application/fhir+turtle", "application/xml", "text/plain"])
def test_accept_of_a_format_not_produced_is_406(api: FhirApi, accept: str) -> None:
    rid = patient(api)
    assert_406(api.get(f"/Patient/{rid}", headers={"Accept": accept}))
    assert_406(api.get("/Patient", headers={"Accept": accept}))


@pytest.mark.parametrize("accept", ["application/fhir+json", "application/json", "*/*", "application/*",
                                    "application/fhir+json; fhirVersion=4.0",
                                    "application/fhir+xml;q=1.0, application/fhir+json;q=0.5",
                                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"])
def test_accept_that_admits_fhir_json(api: FhirApi, accept: str) -> None:
    rid = patient(api)
    r = api.get(f"/Patient/{rid}", headers={"Accept": accept})
    assert r.status_code == 200 and r.json()["id"] == rid


def test_format_overrides_accept(api: FhirApi) -> None:
    rid = patient(api)
    r = api.get(f"/Patient/{rid}", params={"_format": "json"}, headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 200
    assert_406(api.get(f"/Patient/{rid}", params={"_format": "xml"}, headers={"Accept": "application/fhir+json"}))


def test_writes_refused_for_an_unproduced_answer_change_nothing(api: FhirApi) -> None:
    ident = f"fmt-{time.time_ns()}"
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:test:fmt", "value": ident}]}
    assert_406(api.post("/Patient", json=body, headers={**FHIR, "Accept": "application/fhir+xml"}))
    assert_406(api.post("/Patient", json=body, headers={**FHIR, "Accept": "text/plain"}))
    assert_406(api.post("/Patient", json=body, headers=FHIR, params={"_format": "xml"}))
    found = api.get("/Patient", params={"identifier": f"urn:test:fmt|{ident}"}).json()
    assert not [e for e in found.get("entry", []) if e["resource"]["resourceType"] == "Patient"]


@pytest.mark.parametrize("ctype", ["application/fhir+xml", "application/xml", "text/turtle", "text/plain",
                                   "application/fhir+json; fhirVersion=3.0"])
def test_request_bodies_in_an_unsupported_format_are_415(api: FhirApi, ctype: str) -> None:
    r = api.post("/Patient", content=b'{"resourceType":"Patient"}', headers={"Content-Type": ctype})
    assert r.status_code == 415, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    rid = patient(api)
    r = api.put(f"/Patient/{rid}", content=b'{"resourceType":"Patient"}', headers={"Content-Type": ctype})
    assert r.status_code == 415
    assert api.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "1"


def test_fhir_version_parameter_on_request_bodies(api: FhirApi) -> None:
    r = api.post("/Patient", content=b'{"resourceType":"Patient"}',
                 headers={"Content-Type": "application/fhir+json; fhirVersion=4.0"})
    assert r.status_code == 201


def test_pretty(api: FhirApi) -> None:
    rid = patient(api)
    compact = api.get(f"/Patient/{rid}")
    assert b"\n" not in compact.content
    pretty = api.get(f"/Patient/{rid}", params={"_pretty": "true"})
    assert pretty.status_code == 200 and b'\n  "resourceType": "Patient"' in pretty.content
    assert json.loads(pretty.content) == compact.json()
    assert int(pretty.headers["Content-Length"]) == len(pretty.content)
    assert b"\n" in api.get("/Patient", params={"_pretty": "true", "_count": "1"}).content
    assert b"\n" not in api.get(f"/Patient/{rid}", params={"_pretty": "false"}).content
    bad = api.get(f"/Patient/{rid}", params={"_pretty": "yes"})
    assert bad.status_code == 400 and "_pretty" in bad.text


@pytest.mark.parametrize("accept_encoding, compressed", [
    ("gzip", True), ("gzip, deflate, br", True), ("br;q=1, gzip;q=0.5", True), ("*", True), ("x-gzip", True),
    ("identity", False), ("gzip;q=0", False), ("*, gzip;q=0", False), ("br", False), ("", False)])
def test_metadata_is_gzip_compressed_for_clients_that_accept_it(api: FhirApi, accept_encoding: str,
                                                                compressed: bool) -> None:
    """The CapabilityStatement (hundreds of KB of JSON) goes out gzip-compressed when Accept-Encoding admits
    gzip (RFC 9110 12.5.3), as the same JSON otherwise; both say `Vary: Accept-Encoding`."""
    def sent(encoding: str) -> tuple[httpx.Response, bytes]:
        """The answer and its body as sent (httpx decodes `.content`)."""
        with httpx.stream("GET", f"{api.base}/metadata", headers={"Accept-Encoding": encoding}) as r:
            return r, b"".join(r.iter_raw())

    r, body = sent(accept_encoding)
    plain, plain_body = sent("identity")
    assert r.status_code == 200 and "accept-encoding" in r.headers["Vary"].lower()
    assert int(r.headers["Content-Length"]) == len(body)
    if compressed:
        assert r.headers["Content-Encoding"] == "gzip" and len(body) < len(plain_body) / 5
        assert json.loads(gzip.decompress(body)) == json.loads(plain_body)
    else:
        assert "Content-Encoding" not in r.headers and body == plain_body
    assert "Content-Encoding" not in plain.headers
    assert json.loads(plain_body)["resourceType"] == "CapabilityStatement"
    pretty = api.get("/metadata", params={"_pretty": "true"}, headers={"Accept-Encoding": "gzip"})
    assert b'\n  "resourceType": "CapabilityStatement"' in pretty.content and pretty.json() == json.loads(plain_body)


def test_binary_keeps_its_own_negotiation(api: FhirApi) -> None:
    """Raw bytes for a non-FHIR Accept; the resource for _format; 406 for a _format not produced."""
    made = api.post("/Binary", content=b"\x89PNG raw",
                    headers={"Content-Type": "image/png", "Prefer": "return=minimal"})
    created = {"id": made.headers["Location"].split("/Binary/")[1].split("/")[0]}
    raw = api.get(f"/Binary/{created['id']}", headers={"Accept": "image/png"})
    assert raw.status_code == 200 and raw.content == b"\x89PNG raw"
    assert api.get(f"/Binary/{created['id']}", headers={"Accept": "text/plain"}).content == b"\x89PNG raw"
    resource = api.get(f"/Binary/{created['id']}", params={"_format": "json"})
    assert resource.status_code == 200 and resource.json()["resourceType"] == "Binary"
    assert_406(api.get(f"/Binary/{created['id']}", params={"_format": "xml"}))


@pytest.mark.parametrize("charset", ["latin1", "ISO-8859-1", "utf-16", "us-ascii"])
def test_a_charset_other_than_utf8_is_415_on_every_body(api: FhirApi, charset: str) -> None:
    """FHIR JSON is UTF-8: a body declared in another charset is refused (415) on every endpoint that
    reads FHIR JSON, a patch or a form, and changes nothing; raw Binary content keeps its type as data."""
    rid = patient(api)
    fhir = {"Content-Type": f"application/fhir+json; charset={charset}"}
    body = json.dumps({"resourceType": "Patient", "id": rid, "gender": "female"}).encode()
    refused = [
        api.post("/Patient", content=body, headers=fhir),
        api.put(f"/Patient/{rid}", content=body, headers=fhir),
        api.patch(f"/Patient/{rid}", content=b'{"gender": "female"}', headers=fhir),
        api.patch(f"/Patient/{rid}", content=b'{"gender": "female"}',
                  headers={"Content-Type": f"application/merge-patch+json; charset={charset}"}),
        api.patch(f"/Patient/{rid}", content=b'[{"op": "add", "path": "/active", "value": true}]',
                  headers={"Content-Type": f"application/json-patch+json; charset={charset}"}),
        api.post("/", content=b'{"resourceType": "Bundle", "type": "batch"}', headers=fhir),
        api.post("/Patient/$validate", content=body, headers=fhir),
        api.post("/Patient/_search", content=b"gender=female",
                 headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"}),
        api.post("/Binary", content=b'{"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="}',
                 headers=fhir),
        api.post(f"/Binary/{rid}/$binary-access-read", content=b'{"resourceType": "Parameters"}', headers=fhir),
    ]
    for r in refused:
        assert r.status_code == 415, (r.request.method, r.request.url, r.text)
        assert "UTF-8" in r.json()["issue"][0]["diagnostics"]
    assert api.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "1"
    for ok in ("utf-8", "UTF-8", '"utf-8"', "utf8"):
        r = api.post("/Patient", content=body.replace(rid.encode(), b"x"),
                     headers={"Content-Type": f"application/fhir+json; charset={ok}"})
        assert r.status_code == 201, (ok, r.text)
    raw = api.post("/Binary", content="café".encode("latin1"),
                   headers={"Content-Type": f"text/plain; charset={charset}"})
    assert raw.status_code == 201, raw.text
    assert raw.json()["contentType"] == f"text/plain; charset={charset}"


def test_a_body_in_utf16_or_utf32_is_refused_and_a_utf8_bom_is_ignored(api: FhirApi) -> None:
    text = '{"resourceType": "Patient", "name": [{"family": "Zoë"}]}'
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        r = api.post("/Patient", content=text.encode(encoding), headers=FHIR)
        assert r.status_code == 400, (encoding, r.text)
    r = api.post("/Patient", content=text.encode("utf-8-sig"), headers=FHIR)
    assert r.status_code == 201 and r.json()["name"][0]["family"] == "Zoë"
