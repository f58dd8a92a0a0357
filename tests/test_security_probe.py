"""An outside security probe's findings, each kept as a regression test through real HTTP: re-created ids,
stored scripts, patient-context writes, range amplification, ingestion prefixes, file modes, bad input
that once caused 5xx or dropped connections, token throttling, totals, and what logs and errors tell."""

from __future__ import annotations

import json
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from fhirvault.service.ingestion import FAILED_REASON
from tests.security_support import bearer, client_token
from tests.support.origin import OriginServer
from tests.support.server import FhirApi, ServerProcess

FHIR_JSON = {"Content-Type": "application/fhir+json"}
STORED_BYTES_HEADERS = {"x-content-type-options": "nosniff",
                        "content-security-policy": "sandbox; default-src 'none'"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def probe_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("sqlite", auth_failure_limit=5, auth_failure_window=3600)


@pytest.fixture
def api(probe_server: ServerProcess) -> Iterator[FhirApi]:
    with probe_server.api() as client:
        yield client


def as_client(server: ServerProcess, scope: str, patient: str | None = None) -> FhirApi:
    token = client_token(server, uid("probe"), scope, patient)
    return FhirApi(server.base, headers=bearer(token))


def with_signed_url(created: httpx.Response) -> dict[str, Any]:
    """A created Binary with the signed URL of its content (the Link rel=alternate header) as `url`."""
    return {**created.json(), "url": created.links["alternate"]["url"]}


def put(api: FhirApi, resource: dict[str, Any]) -> httpx.Response:
    return api.put(f"/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR_JSON)


# -- 1. re-creating a deleted id ------------------------------------------------------------------
def test_recreating_a_deleted_id_hands_over_neither_binaries_nor_jobs(probe_server: ServerProcess,
                                                                      api: FhirApi) -> None:
    a, c, d = uid("pa"), uid("pc"), uid("doc")
    for pid in (a, c):
        assert put(api, {"resourceType": "Patient", "id": pid}).status_code == 201
    doc = {"resourceType": "DocumentReference", "id": d, "status": "current",
           "subject": {"reference": f"Patient/{c}"},
           "content": [{"attachment": {"url": "https://127.0.0.1:1/scan.png"}}]}  # an ingestion job
    assert put(api, doc).status_code == 201
    secret = b"patient C's scan"
    binary = api.post("/Binary", content=secret, headers={"Content-Type": "image/png",
                                                          "X-Security-Context": f"DocumentReference/{d}"}).json()
    assert len(api.get(f"/DocumentReference/{d}/$ingestion-status").json().get("parameter", [])) == 1
    assert api.delete(f"/DocumentReference/{d}").status_code == 204

    with as_client(probe_server, "patient/*.cruds", f"Patient/{a}") as patient_a, \
            as_client(probe_server, "patient/*.rs", f"Patient/{c}") as patient_c:
        taken = put(patient_a, {**doc, "subject": {"reference": f"Patient/{a}"}, "content": [
            {"attachment": {"contentType": "text/plain", "data": "aGk="}}]})
        assert taken.status_code in (403, 404), taken.text  # could not have written C's document
        assert patient_a.get(f"/Binary/{binary['id']}").status_code == 404
        # An administrator re-creates the id for A: the Binary stays bound to the deleted version's owner.
        assert put(api, {**doc, "subject": {"reference": f"Patient/{a}"}, "content": [
            {"attachment": {"contentType": "text/plain", "data": "aGk="}}]}).status_code == 201
        assert patient_a.get(f"/Binary/{binary['id']}").status_code == 404
        assert patient_a.get(f"/DocumentReference/{d}").status_code == 200
        kept = patient_c.get(f"/Binary/{binary['id']}")
        assert kept.status_code == 200 and kept.content == secret
        status = patient_a.get(f"/DocumentReference/{d}/$ingestion-status")
        assert status.status_code == 200 and status.json().get("parameter", []) == []  # the old life's job

        # The same through a deleted Patient re-created with a link to A.
        assert api.delete(f"/Patient/{c}").status_code == 204
        linked = put(patient_a, {"resourceType": "Patient", "id": c, "link": [
            {"other": {"reference": f"Patient/{a}"}, "type": "seealso"}]})
        assert linked.status_code in (403, 404), linked.text


# -- 2. stored scripts ------------------------------------------------------------------------------
HTML = b"<!doctype html><script>document.title='ran'</script>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def assert_protected(r: httpx.Response, attachment: bool) -> None:
    assert r.status_code in (200, 206), r.text
    for name, value in STORED_BYTES_HEADERS.items():
        assert r.headers.get(name) == value, (name, r.headers)
    disposition = r.headers.get("content-disposition", "")
    assert disposition.startswith("attachment") == attachment, r.headers


def test_every_response_with_stored_bytes_is_inert(probe_server: ServerProcess, api: FhirApi) -> None:
    with as_client(probe_server, "patient/*.cruds", "Patient/p-xss") as patient:
        assert put(api, {"resourceType": "Patient", "id": "p-xss"}).status_code in (200, 201)
        html = patient.post("/Binary", content=HTML, headers={"Content-Type": "text/html",
                                                              "X-Security-Context": "Patient/p-xss"})
        assert html.status_code == 201, html.text
    svg = with_signed_url(api.post("/Binary", content=SVG, headers={"Content-Type": "image/svg+xml"}))
    png = with_signed_url(api.post("/Binary", content=b"\x89PNG\r\n\x1a\n", headers={"Content-Type": "image/png"}))
    for created, attachment in ((with_signed_url(html), True), (svg, True), (png, False)):
        assert_protected(api.get(f"/Binary/{created['id']}"), attachment)
        assert_protected(api.get(f"/Binary/{created['id']}", headers={"Range": "bytes=0-3"}), attachment)
        assert_protected(httpx.get(created["url"]), attachment)  # the token-less signed URL
        assert_protected(api.get(f"/Binary/{created['id']}/$binary-access-read"), attachment)
    # An Attachment's contentType overrides the Binary's on $binary-access-read: judged on what is sent.
    doc = api.post("/DocumentReference", json={"resourceType": "DocumentReference", "status": "current", "content": [
        {"attachment": {"contentType": "text/html", "url": f"Binary/{png['id']}"}}]}, headers=FHIR_JSON).json()
    read = api.get(f"/DocumentReference/{doc['id']}/$binary-access-read",
                   params={"path": "DocumentReference.content[0].attachment"})
    assert read.headers["content-type"].startswith("text/html")
    assert_protected(read, attachment=True)
    media = api.post("/Media", json={"resourceType": "Media", "status": "completed", "content": {
        "contentType": "image/svg+xml", "data": "PHN2Zy8+"}}, headers=FHIR_JSON).json()
    assert_protected(api.get(f"/Media/{media['id']}", params={"_output": "data"}), attachment=True)
    cached = api.get(f"/Binary/{svg['id']}", headers={"If-None-Match": httpx.get(svg["url"]).headers["etag"]})
    assert cached.status_code == 304 and cached.headers["x-content-type-options"] == "nosniff"


# -- 3. patient-context writes ------------------------------------------------------------------
def test_patient_client_writes_only_into_its_own_compartment(probe_server: ServerProcess, api: FhirApi) -> None:
    a, b = uid("pa"), uid("pb")
    for pid in (a, b):
        assert put(api, {"resourceType": "Patient", "id": pid}).status_code == 201

    def obs(subject: str, performer: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                "subject": {"reference": subject}}
        if performer:
            body["performer"] = [{"reference": performer}]
        return body

    with as_client(probe_server, "patient/*.cruds", f"Patient/{a}") as patient_a:
        for body in (obs(f"Patient/{b}", f"Patient/{a}"), obs(f"Patient/{a}", f"Patient/{b}")):
            r = patient_a.post("/Observation", json=body, headers=FHIR_JSON)
            assert r.status_code == 403, r.text
        own = patient_a.post("/Observation", json=obs(f"Patient/{a}"), headers=FHIR_JSON)
        assert own.status_code == 201
        moved = patient_a.put(f"/Observation/{own.json()['id']}", json={**own.json(), **obs(f"Patient/{b}")},
                              headers=FHIR_JSON)
        assert moved.status_code == 403, moved.text
    found = api.get("/Observation", params={"subject": f"Patient/{b}", "_summary": "count"}).json()
    assert found["total"] == 0


# -- 4. range amplification ---------------------------------------------------------------------
def test_ranges_never_amplify(api: FhirApi) -> None:
    body = bytes(range(256)) * 40
    created = api.post("/Binary", content=body, headers={"Content-Type": "application/octet-stream"})
    url = with_signed_url(created)["url"]
    many = httpx.get(url, headers={"Range": "bytes=" + ",".join(["0-"] * 64)})
    assert many.status_code == 200 and many.content == body
    overlapping = httpx.get(url, headers={"Range": "bytes=0-99,50-149"})
    assert overlapping.status_code == 206 and overlapping.content == body[:150]
    assert overlapping.headers["content-range"] == f"bytes 0-149/{len(body)}"
    adjacent = httpx.get(url, headers={"Range": "bytes=10-19,0-9"})
    assert adjacent.status_code == 206 and adjacent.content == body[:20]
    assert httpx.get(url, headers={"Range": "bytes=0-" + "9" * 5000}).status_code == 200  # not a valid range


# -- 5. ingestion prefixes ------------------------------------------------------------------------
def test_ingestion_prefixes_hold_against_dot_segments_and_redirects(
        server_factory: Callable[..., ServerProcess]) -> None:
    with OriginServer() as origin:
        server = server_factory("sqlite", ingest_allow_hosts="127.0.0.1", ingest_max_attempts=1,
                                ingest_allow_prefixes=f"{origin.url}/redirect/")
        with server.api() as api:
            refs = []
            for url in (f"{origin.url}/redirect/../file/100", f"{origin.url}/redirect/%2e%2e/file/100",
                        f"{origin.url}/redirect/1/file/100", f"{origin.url}/redirect-not/file/100"):
                created = api.post("/Media", json={"resourceType": "Media", "status": "completed",
                                                   "content": {"url": url}}, headers=FHIR_JSON).json()
                refs.append(f"Media/{created['id']}")
            jobs = {ref: api.get(f"/{ref}/$ingestion-status").json().get("parameter", []) for ref in refs}
            # Dot segments and a look-alike prefix are not scheduled at all.
            assert [len(j) for j in jobs.values()] == [0, 0, 1, 0]
            redirected = refs[2]
            import time
            deadline = time.monotonic() + 60
            while True:
                parts = api.get(f"/{redirected}/$ingestion-status").json()["parameter"][0]["part"]
                state = next(p["valueCode"] for p in parts if p["name"] == "state")
                if state in ("done", "failed"):
                    break
                assert time.monotonic() < deadline, parts
                time.sleep(0.05)
            assert state == "failed"
            assert next(p["valueString"] for p in parts if p["name"] == "error") == FAILED_REASON
        assert origin.requests["/redirect/1/file/100"] == 1
        assert origin.requests["/file/100"] == 0  # the redirect out of the prefix was not followed
        assert "outside INGEST_ALLOW_PREFIXES" in server.log_path.read_text()


def test_dates_at_the_end_of_the_calendar_are_answered(api: FhirApi) -> None:
    """A time late on 9999-12-31 in a zone behind UTC is in year 10000 in UTC: once a 500 (an overflow),
    then a 400; it is a valid FHIR dateTime, so searches and history take it and find nothing later."""
    late = "9999-12-31T23:59:59-14:00"
    for path, params in (("/Patient", {"_lastUpdated": late}), ("/Patient", {"_lastUpdated": f"ge{late}"}),
                         ("/Patient", {"birthdate": f"gt{late}"}), ("/_history", {"_since": late}),
                         ("/Patient/_history", {"_since": late, "_count": 1})):
        r = api.get(path, params=params)
        assert r.status_code == 200, (path, params, r.text)
        assert not [e for e in r.json().get("entry", []) if e.get("search", {}).get("mode") != "outcome"]


# -- 6. file modes ------------------------------------------------------------------------------
def test_data_dir_and_files_are_private(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", storage_mode="filesystem", inline_max_bytes=10)
    with server.api() as api:
        assert api.post("/Binary", content=b"x" * 100, headers={"Content-Type": "text/plain"}).status_code == 201
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in server.data_dir.rglob("*")
             if not p.name.startswith("server-")}  # the test's own log file
    files = {p: m for p, m in modes.items() if p.is_file()}
    dirs = {p: m for p, m in modes.items() if p.is_dir()}
    assert any(p.name == "fhirvault.db" for p in files) and any("blobs" in p.parts for p in files)
    assert all(m == 0o600 for m in files.values()), files
    assert all(m == 0o700 for m in dirs.values()), dirs
    server.stop()
    server.data_dir.chmod(0o755)
    server.start()
    assert "readable by other users" in server.log_path.read_text()


# -- 7. bad input: 4xx, never 5xx or a dropped connection -----------------------------------------
def raw_request(server: ServerProcess, head: bytes, body: bytes = b"") -> int:
    """Sends one request byte for byte (headers no client library would send); its status code."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer, "the server dropped the connection without an answer"
    return int(answer.split(b" ", 2)[1])


def test_bad_input_is_answered_4xx_and_stores_nothing(probe_server: ServerProcess, api: FhirApi) -> None:
    stored = api.post("/Binary", content=b"hello", headers={"Content-Type": "text/plain"}).json()
    big = "9" * 5000
    cases: list[tuple[str, Callable[[], httpx.Response]]] = [
        ("superscript version", lambda: httpx.get(f"{probe_server.url}/storage/{stored['id']}/%C2%B2?exp=1")),
        ("superscript vread", lambda: api.get("/Patient/x/_history/%C2%B2")),
        ("huge version", lambda: api.get(f"/Binary/{stored['id']}/_history/{big}")),
        ("huge version op", lambda: api.get(f"/Binary/{stored['id']}/_history/{'9' * 25}/$binary-access-read")),
        ("huge number in a body", lambda: api.post("/Observation", headers=FHIR_JSON, content=(
            '{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueInteger":' + big + "}"))),
        ("huge float in a body", lambda: api.post("/Observation", headers=FHIR_JSON, content=(
            '{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e999}}'))),
        ("huge _offset", lambda: api.get("/Patient", params={"_offset": "100000000000000000000"})),
        ("huge history _offset", lambda: api.get("/Patient/_history", params={"_offset": "1" + "0" * 20})),
        ("2000 OR values", lambda: api.get("/Patient", params={"identifier": ",".join(map(str, range(2000)))})),
        ("2000 parameters", lambda: api.get("/Patient?" + "&".join(f"identifier={i}" for i in range(2000)))),
        ("deep JSON", lambda: api.post("/Patient", headers=FHIR_JSON,
                                       content='{"resourceType":"Patient","x":' + "[" * 100000 + "]" * 100000 + "}")),
        ("deep JSON Binary", lambda: api.post("/Binary", headers=FHIR_JSON,
                                              content='{"resourceType":"Binary","x":' + "[" * 200 + "]" * 200 + "}")),
        ("malformed Parameters", lambda: api.post(f"/Binary/{stored['id']}/$binary-access-read", headers=FHIR_JSON,
                                                  json={"resourceType": "Parameters", "parameter": 5})),
        ("Parameters path not a string", lambda: api.post(
            f"/Binary/{stored['id']}/$binary-access-read", headers=FHIR_JSON,
            json={"resourceType": "Parameters", "parameter": [{"name": "path", "valueInteger": 5}]})),
        ("JSON POST /Binary/_search", lambda: api.post("/Binary/_search", json={}, headers=FHIR_JSON)),
        ("NaN", lambda: api.post("/Observation", headers=FHIR_JSON, content=(
            '{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":NaN}}'))),
        ("Infinity", lambda: api.post("/Observation", headers=FHIR_JSON, content=(
            '{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":-Infinity}}'))),
        ("duplicate keys", lambda: api.post("/Patient", headers=FHIR_JSON,
                                            content='{"resourceType":"Patient","gender":"male","gender":"female"}')),
        ("id ending in a newline", lambda: api.put("/Patient/x%0A", headers=FHIR_JSON,
                                                   json={"resourceType": "Patient", "id": "x\n"})),
        ("Binary id ending in a newline", lambda: api.put("/Binary/x%0A", content=b"x",
                                                          headers={"Content-Type": "text/plain"})),
        ("Content-Type not a media type", lambda: api.post("/Binary", content=b"x",
                                                           headers={"Content-Type": "text"})),
        ("JSON Binary.contentType with CR/LF", lambda: api.post("/Binary", headers=FHIR_JSON, json={
            "resourceType": "Binary", "contentType": "text/plain\r\nX-Evil: 1", "data": "aGk="})),
        ("JSON Binary.contentType not Latin-1", lambda: api.post("/Binary", headers=FHIR_JSON, json={
            "resourceType": "Binary", "contentType": "text/pl€in", "data": "aGk="})),
        ("If-Match not ASCII", lambda: api.put("/Patient/abc", json={"resourceType": "Patient", "id": "abc"},
                                               headers={**FHIR_JSON, "If-Match": 'W/"\u00b2"'.encode("utf-8")})),
    ]
    before = api.get("/_history", params={"_summary": "count"}).json()["total"]
    for name, send in cases:
        r = send()
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        if r.headers.get("content-type", "").startswith("application/fhir+json"):
            assert r.json()["resourceType"] == "OperationOutcome", name
    assert api.get("/_history", params={"_summary": "count"}).json()["total"] == before  # nothing stored

    token = probe_server.auth_headers()["Authorization"].encode()
    for header in (b"Content-Type: text/pl\xc3\xa4in", b"Content-Type: text/pl\xe4in",
                   b"Content-Type: text/plain\rX-Evil: 1", b"Content-Type: text/plain\x01",
                   b"Content-Type: text/plain\r\nX-Security-Context: Patient/\xe4",
                   b"Content-Type: text/plain\r\nX-Security-Context: Patient/1\rX"):
        status = raw_request(probe_server, b"POST /fhir/R4/Binary HTTP/1.1\r\nAuthorization: " + token
                             + b"\r\n" + header, b"x")
        assert 400 <= status < 500, (header, status)
    assert api.get("/_history", params={"_summary": "count"}).json()["total"] == before
    assert api.get("/metadata").status_code == 200


# -- 8. token endpoint ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_token_endpoint_throttles_unknown_ids_and_concurrent_guesses(
        server_factory: Callable[..., ServerProcess], backend: str) -> None:
    server = server_factory(backend, auth_failure_limit=5, auth_failure_window=3600)

    def attempt(client_id: str, secret: str) -> int:
        return httpx.post(f"{server.url}/oauth2/token", timeout=120, data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}).status_code

    unknown = [attempt("no-such-client", "guess") for _ in range(7)]
    assert unknown == [401] * 5 + [429] * 2  # unknown ids are throttled like known ones
    known = server.create_client("victim", "system/*.rs")
    with ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(pool.map(lambda _: attempt(known["client_id"], "wrong"), range(30)))
    assert answers.count(401) == 5 and answers.count(429) == 25, answers
    assert attempt(known["client_id"], known["client_secret"]) == 429


# -- 9, 10. totals and the Binary type history ------------------------------------------------------
def test_totals_count_only_what_the_caller_may_read(probe_server: ServerProcess, api: FhirApi) -> None:
    p = uid("pt")
    assert put(api, {"resourceType": "Patient", "id": p}).status_code == 201
    for _ in range(2):
        api.post("/Binary", content=b"x", headers={"Content-Type": "text/plain", "X-Security-Context": f"Patient/{p}"})
    with as_client(probe_server, "system/Binary.rs") as binary_only:
        visible = binary_only.get("/Binary", params={"_count": "1000"}).json().get("entry", [])
        counted = binary_only.get("/Binary", params={"_summary": "count"}).json()["total"]
        assert counted == len(visible)
        history = binary_only.get("/Binary/_history", params={"_count": "1000"}).json()
        assert history["total"] == len(history.get("entry", []))
        assert all(e["fullUrl"].split("/")[-2] == "Binary" for e in history.get("entry", []))
        assert all(e["resource"].get("securityContext", {}).get("reference") != f"Patient/{p}"
                   for e in history.get("entry", []) if "resource" in e)
    with as_client(probe_server, "patient/*.rs", f"Patient/{p}") as patient:
        history = patient.get("/Observation/_history").json()
        assert history["total"] == len(history.get("entry", [])) == 0
    with as_client(probe_server, "system/Patient.rs") as no_binary:
        assert no_binary.get("/Binary/_history").status_code == 403


# -- 13. what the access log keeps ----------------------------------------------------------------
def test_access_token_in_the_query_is_redacted_in_the_log(probe_server: ServerProcess) -> None:
    secret = f"eyJ{uuid.uuid4().hex}"
    r = httpx.get(f"{probe_server.base}/Patient", params={"access_token": secret})
    assert r.status_code == 401 and secret not in r.text
    # it said "needs an access token", although one was sent
    assert "Authorization header" in r.json()["issue"][0]["diagnostics"]
    log = probe_server.log_path.read_text()
    assert secret not in log and "access_token=REDACTED" in log


def test_search_values_stay_out_of_the_log(probe_server: ServerProcess, api: FhirApi) -> None:
    """Search values are patient data (names, identifiers, birth dates): the access log keeps each
    parameter's name and not its value. They were logged as sent."""
    family, identifier = f"Fam{uuid.uuid4().hex[:10]}", f"mrn-{uuid.uuid4().hex}"
    r = api.get("/Patient", params={"family": family, "identifier": identifier, "birthdate": "ge1970-01-01"})
    assert r.status_code == 200
    log = probe_server.log_path.read_text()
    assert family not in log and identifier not in log and "1970-01-01" not in log
    assert "family=REDACTED&identifier=REDACTED&birthdate=REDACTED" in log
    # a quote does not end a value (JavaScript's encodeURIComponent leaves `'` as it is), and a part
    # without `=` is a value as well
    secret = uuid.uuid4().hex[:12]
    target = f"/Patient?name=O'{secret}&given=D\"{secret}&{secret}"
    assert api.get(target).status_code == 200
    log = probe_server.log_path.read_text()
    assert secret not in log
    assert "/Patient?name=REDACTED&given=REDACTED&REDACTED HTTP/1.1" in log


# -- If-Match on another patient's resource -----------------------------------------------------------
def test_if_match_on_another_patients_resource_is_404_not_412(probe_server: ServerProcess, api: FhirApi) -> None:
    """A write with If-Match to a resource outside the caller's compartment answers 404 as if it did not
    exist; it used to be 412 naming the resource's current version (update), or to ignore If-Match."""
    mine, theirs = uid("pm"), uid("pt")
    for p in (mine, theirs):
        assert put(api, {"resourceType": "Patient", "id": p}).status_code == 201
    with as_client(probe_server, "patient/*.cruds", f"Patient/{mine}") as patient:
        for method in ("PUT", "DELETE"):
            body = {"resourceType": "Patient", "id": theirs} if method == "PUT" else None
            r = patient.request(method, f"/Patient/{theirs}", json=body, headers={"If-Match": 'W/"7"'})
            assert r.status_code == 404 and "version" not in r.text, (method, r.text)
        r = patient.put(f"/Patient/{mine}", json={"resourceType": "Patient", "id": mine}, headers={"If-Match": 'W/"7"'})
        assert r.status_code == 412
    assert api.get(f"/Patient/{theirs}").json()["meta"]["versionId"] == "1"


# -- 2. a second probe: conditional interactions, and what vread and history tell of hidden resources ---
def test_conditional_interactions_need_the_search_scope(probe_server: ServerProcess, api: FhirApi) -> None:
    """Matching criteria is a search: a create-only client got a whole Patient back through If-None-Exist's
    match, and write-only clients learned ids (and whether anything matched) from conditional writes and
    conditional references. Each is now 403 naming the search scope, and changes nothing."""
    t = uid("cond")
    pid = api.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": "urn:cond", "value": t}],
                                      "name": [{"family": "Bravo"}]}).json()["id"]
    crit = f"identifier=urn:cond|{t}"
    patient = {"resourceType": "Patient", "name": [{"family": "New"}]}

    def refused(r: httpx.Response) -> None:
        assert r.status_code == 403 and "system/Patient.s" in r.text, r.text
        assert "Bravo" not in r.text and pid not in r.text

    with as_client(probe_server, "system/Patient.c") as create_only, \
            as_client(probe_server, "system/*.cud") as write_only, \
            as_client(probe_server, "system/Patient.cs") as create_and_search:
        refused(create_only.post("/Patient", json=patient, headers={**FHIR_JSON, "If-None-Exist": crit}))
        refused(create_only.post(f"/Patient?{crit}", json=patient, headers=FHIR_JSON))
        batch = create_only.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": patient, "request": {"method": "POST", "url": "Patient", "ifNoneExist": crit}}]}).json()
        assert batch["entry"][0]["response"]["status"].startswith("403"), batch
        assert "Bravo" not in str(batch) and pid not in str(batch)
        refused(write_only.patch(f"/Patient?{crit}", content=b"[]",
                                 headers={"Content-Type": "application/json-patch+json"}))
        refused(write_only.put(f"/Patient?{crit}", json={**patient, "id": "x"}, headers=FHIR_JSON))
        refused(write_only.delete(f"/Patient?{crit}"))
        refused(write_only.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": f"Patient?{crit}"}},
            "request": {"method": "POST", "url": "Observation"}}]}))
        # with the search scope the match is found and kept
        kept = create_and_search.post("/Patient", json=patient, headers={**FHIR_JSON, "If-None-Exist": crit})
        assert kept.status_code == 200 and kept.json()["id"] == pid
    assert api.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "1"
    assert api.get("/Patient", params={"family": "New", "_summary": "count"}).json()["total"] == 0


def test_vread_and_history_tell_nothing_of_hidden_resources(probe_server: ServerProcess, api: FhirApi) -> None:
    """A hidden resource's versions answered "is not known" and the numbers above them "has no version N", and
    a hidden deleted resource's history was an empty 200 where an unknown id is 404: both told which ids
    exist and how often they changed. Every such answer is now worded as for an id never used."""
    mine, theirs, never = uid("pm"), uid("pt"), uid("never")
    for p in (mine, theirs):
        assert put(api, {"resourceType": "Patient", "id": p}).status_code == 201
    assert put(api, {"resourceType": "Patient", "id": theirs, "active": True}).status_code == 200
    obs = {"resourceType": "Observation", "id": uid("obs"), "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{theirs}"}}
    assert put(api, obs).status_code == 201
    assert api.delete(f"/Observation/{obs['id']}").status_code in (200, 204)
    with as_client(probe_server, "patient/*.rds", f"Patient/{mine}") as patient:
        answers = []
        for rid, vid in ((theirs, 1), (theirs, 2), (theirs, 3), (never, 1)):
            r = patient.get(f"/Patient/{rid}/_history/{vid}")
            answers.append((r.status_code, r.json()["issue"][0]["diagnostics"].replace(rid, "ID")))
        assert len({(status, text.replace(f"version {v}", "version N"))
                    for (status, text), v in zip(answers, (1, 2, 3, 1), strict=True)}) == 1, answers
        assert answers[0][0] == 404
        hidden = patient.get(f"/Observation/{obs['id']}/_history")
        unknown = patient.get(f"/Observation/{never}/_history")
        assert hidden.status_code == unknown.status_code == 404, hidden.text
        assert hidden.json()["issue"][0]["diagnostics"].replace(obs["id"], "ID") \
            == unknown.json()["issue"][0]["diagnostics"].replace(never, "ID")
        # DELETE likewise: another patient's resource and an id never used answer alike (204 told them apart)
        deletes = [patient.delete(f"/Patient/{rid}") for rid in (theirs, never)]
        assert [d.status_code for d in deletes] == [404, 404], [d.text for d in deletes]
        assert deletes[0].json()["issue"][0]["diagnostics"].replace(theirs, "ID") \
            == deletes[1].json()["issue"][0]["diagnostics"].replace(never, "ID")
    # the history of a deleted resource the caller may read is still there
    assert api.get(f"/Observation/{obs['id']}/_history").json()["total"] == 2


def test_a_request_the_parser_cannot_read_is_answered_with_an_operation_outcome(probe_server: ServerProcess) -> None:
    """A raw non-ASCII byte in the request line (curl sends `?family=Sévère` as it is) got uvicorn's text/plain
    "Invalid HTTP request received."; every error is an OperationOutcome."""
    host, port = probe_server.base.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall("GET /fhir/R4/Patient?family=Sévère HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/fhir+json" in head, answer
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and "S%C3%A9v%C3%A8re" in outcome["issue"][0]["diagnostics"]


def test_a_patient_client_refused_a_write_is_told_what_to_add(probe_server: ServerProcess, api: FhirApi) -> None:
    """A patient-context client's create outside its compartment named an id that was never created and
    spoke of "another patient's compartment"; it now says which reference (or securityContext) to give."""
    mine = uid("pm")
    assert put(api, {"resourceType": "Patient", "id": mine}).status_code == 201
    with as_client(probe_server, "patient/*.cruds", f"Patient/{mine}") as patient:
        r = patient.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
        assert r.status_code == 403 and f"refer to Patient/{mine}" in r.text and "new Observation" in r.text, r.text
        r = patient.post("/Binary", content=b"x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 403 and f"X-Security-Context: Patient/{mine}" in r.text, r.text
        ok = patient.post("/Binary", content=b"x", headers={"Content-Type": "text/plain",
                                                             "X-Security-Context": f"Patient/{mine}"})
        assert ok.status_code == 201
