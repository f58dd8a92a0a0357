"""Malware scanning against a real clamd (started here with a signature database the test writes): verdicts
by content, the scan-status extension and search parameter, the block policy on every path that serves
bytes, clamd outages retried with backoff, the size limit, and `fhirvault scan [--rescan-all]`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.clamd import (
    EICAR,
    EICAR_SIGNATURE,
    TEST_FILE_SIGNATURE,
    Clamd,
    malware_sample,
    require_clamd,
)
from tests.support.server import FhirApi, ServerProcess, settings_env

EXTENSION_PATH = "/StructureDefinition/scan-status"
FHIR_JSON = "application/fhir+json"
# Short backoff so a test sees retries within seconds; many attempts so none runs out while clamd is down.
FAST_RETRIES = {"scan_backoff_seconds": 0.2, "scan_max_attempts": 30}


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    require_clamd()
    daemon = Clamd(tmp_path_factory.mktemp("clamd")).start()
    yield daemon
    daemon.stop()


def _upload(api: FhirApi, data: bytes, content_type: str = "application/octet-stream",
            headers: dict[str, str] | None = None) -> tuple[str, str]:
    """(Binary id, signed URL from the Link header) of a raw upload."""
    r = api.post("/Binary", content=data, headers={"Content-Type": content_type, **(headers or {})})
    assert r.status_code == 201, r.text
    link = r.headers["link"]
    return r.json()["id"], link[link.index("<") + 1:link.index(">")]


def _scan_status(api: FhirApi, binary_id: str) -> dict[str, Any]:
    """The scan-status extension of the Binary as search shows it: {"status": ..., "signature": ...}."""
    r = api.get("/Binary", params={"_id": binary_id})
    assert r.status_code == 200, r.text
    [entry] = r.json()["entry"]
    ext = [e for e in entry["resource"].get("meta", {}).get("extension", []) if e["url"].endswith(EXTENSION_PATH)]
    assert len(ext) == 1, entry["resource"]
    assert ext[0]["url"] == api.base + EXTENSION_PATH
    return {part["url"]: next(v for k, v in part.items() if k.startswith("value")) for part in ext[0]["extension"]}


def _wait_status(api: FhirApi, binary_id: str, wanted: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = _scan_status(api, binary_id)
        if status["status"] == wanted:
            return status
        assert time.monotonic() < deadline, f"Binary/{binary_id} stayed {status}, never {wanted}"
        time.sleep(0.1)


def _eventually(read: Callable[[], httpx.Response], status: int, timeout: float = 60) -> httpx.Response:
    """The first answer of `read` with `status`, polling while the holding's scan job is still pending (423)."""
    deadline = time.monotonic() + timeout
    while True:
        r = read()
        if r.status_code != 423 or status == 423 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def _found(api: FhirApi, params: dict[str, str]) -> set[str]:
    r = api.get("/Binary", params={**params, "_count": "200"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def _byte_reads(api: FhirApi, binary_id: str, signed_url: str, doc_id: str, media_id: str
                ) -> dict[str, Callable[[dict[str, str]], httpx.Response]]:
    """Every way to get the bytes of one Binary, each taking extra headers."""
    path = "DocumentReference.content%5B0%5D.attachment"
    return {
        "raw read": lambda h: api.get(f"/Binary/{binary_id}", headers=h),
        "raw HEAD": lambda h: api.head(f"/Binary/{binary_id}", headers=h),
        "range": lambda h: api.get(f"/Binary/{binary_id}", headers={"Range": "bytes=0-9", **h}),
        "vread": lambda h: api.get(f"/Binary/{binary_id}/_history/1", headers=h),
        "JSON read with data": lambda h: api.get(f"/Binary/{binary_id}", headers={"Accept": FHIR_JSON, **h}),
        "_format=json": lambda h: api.get(f"/Binary/{binary_id}", params={"_format": "json"}, headers=h),
        "signed URL": lambda h: httpx.get(signed_url, headers=h),
        "Binary $binary-access-read": lambda h: api.get(f"/Binary/{binary_id}/$binary-access-read", headers=h),
        "DocumentReference $binary-access-read": lambda h: api.get(
            f"/DocumentReference/{doc_id}/$binary-access-read?path={path}", headers=h),
        "raw Media": lambda h: api.get(f"/Media/{media_id}", params={"_output": "data"}, headers=h),
    }


def _holders(api: FhirApi, binary_id: str, content_type: str) -> tuple[str, str]:
    """A DocumentReference and a Media whose Attachment names the Binary: (doc id, media id)."""
    doc = api.post("/DocumentReference", json={
        "resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": content_type, "url": f"Binary/{binary_id}"}}]})
    assert doc.status_code == 201, doc.text
    media = api.post("/Media", json={"resourceType": "Media", "status": "completed",
                                     "content": {"contentType": content_type, "url": f"Binary/{binary_id}"}})
    assert media.status_code == 201, media.text
    return doc.json()["id"], media.json()["id"]


def _assert_outcome(r: httpx.Response, status: int, what: str) -> None:
    assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
    if r.request.method != "HEAD":
        assert r.json()["resourceType"] == "OperationOutcome", what


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_block_mode_scans_once_and_holds_back_infected_content_on_every_path(
        backend: str, clamd: Clamd, server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(backend, scan_mode="block", scan_clamd_url=clamd.unix_url, **FAST_RETRIES)
    reader = server.create_client("reader", "system/*.rs")
    reader_headers = {"Authorization": f"Bearer {server.token(reader['client_id'], reader['client_secret'])}"}
    clean = os.urandom(150_000)
    malware = malware_sample()  # above INLINE_MAX_BYTES: in blob storage
    with server.api() as api, FhirApi(server.base, headers=reader_headers) as other:
        clean_id, clean_url = _upload(api, clean)
        malware_id, malware_url = _upload(api, malware)
        eicar_id, _ = _upload(api, EICAR, "text/plain")  # small: kept inline in the resource
        assert _wait_status(api, clean_id, "clean").keys() == {"status", "scanned"}
        infected = _wait_status(api, malware_id, "infected")
        assert infected["signature"].startswith(TEST_FILE_SIGNATURE)
        assert _wait_status(api, eicar_id, "infected")["signature"].startswith(EICAR_SIGNATURE)

        # Search by verdict, with the access rules of the caller inside the query.
        assert {malware_id, eicar_id} <= _found(api, {"scan-status": "infected"})
        assert clean_id not in _found(api, {"scan-status": "infected"})
        assert clean_id in _found(api, {"scan-status": "clean,skipped"})
        assert not _found(api, {"scan-status": "pending", "_id": clean_id})
        assert clean_id in _found(api, {"scan-status:not": "infected"})
        assert malware_id not in _found(api, {"scan-status:not": "infected"})
        assert clean_id in _found(api, {"scan-status:missing": "false"})
        assert clean_id not in _found(api, {"scan-status:missing": "true"})
        assert api.get("/Binary", params={"scan-status:exact": "clean"}).status_code == 400
        bad = api.get("/Binary", params={"scan-status": "dirty"})
        assert bad.status_code == 400 and "dirty" in bad.text
        assert api.get("/Patient", params={"scan-status": "clean"},
                       headers={"Prefer": "handling=strict"}).status_code == 400

        # An inline infected Binary is listed without its data; a clean one keeps it.
        eicar_entry = api.get("/Binary", params={"_id": eicar_id}).json()["entry"][0]["resource"]
        assert "data" not in eicar_entry
        small_clean_id, _ = _upload(api, b"plain text, nothing to see", "text/plain")
        _wait_status(api, small_clean_id, "clean")
        listed = api.get("/Binary", params={"_id": small_clean_id}).json()["entry"][0]["resource"]
        assert base64.b64decode(listed["data"]) == b"plain text, nothing to see"

        for binary_id, url, body, ctype in ((clean_id, clean_url, clean, "application/octet-stream"),
                                            (malware_id, malware_url, malware, "application/octet-stream")):
            doc_id, media_id = _holders(api, binary_id, ctype)
            reads = _byte_reads(api, binary_id, url, doc_id, media_id)
            other_reads = _byte_reads(other, binary_id, url, doc_id, media_id)
            for what, read in reads.items():
                r = read({})
                if binary_id == clean_id:
                    assert r.status_code in (200, 206), f"{what}: {r.status_code} {r.text[:200]}"
                    continue
                _assert_outcome(r, 403, what)
                if r.request.method != "HEAD":
                    assert "infected" in r.text and TEST_FILE_SIGNATURE in r.text, what
                # A client without the admin scope gets nothing by asking.
                _assert_outcome(other_reads[what]({"X-Scan-Override": "true"}), 403,
                                f"{what} by a non-admin asking to override")
            # The admin client that asks explicitly gets the bytes (signed URLs carry no caller: never).
            got = reads["raw read"]({"X-Scan-Override": "true"})
            assert got.status_code == 200 and got.content == body
            assert reads["signed URL"]({"X-Scan-Override": "true"}).status_code == (200 if binary_id == clean_id
                                                                                   else 403)
            as_json = reads["JSON read with data"]({"X-Scan-Override": "true"})
            assert as_json.status_code == 200 and base64.b64decode(as_json.json()["data"]) == body

        # Inline Attachment data in another resource is scanned too.
        doc = api.post("/DocumentReference", json={
            "resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(EICAR).decode()}}]})
        assert doc.status_code == 201, doc.text
        path = "DocumentReference.content%5B0%5D.attachment"
        _assert_outcome(_eventually(lambda: api.get(
            f"/DocumentReference/{doc.json()['id']}/$binary-access-read?path={path}"), 403), 403,
            "inline Attachment data")

        # The same content again (another Binary, a new version) is not scanned again, yet goes through its own
        # job like new content (the job list below shows that it took the verdict over).
        again_id, _ = _upload(api, malware)
        _wait_status(api, again_id, "infected")
        put = api.put(f"/Binary/{clean_id}", content=malware, headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 200
        _wait_status(api, clean_id, "infected")
        _assert_outcome(api.get(f"/Binary/{clean_id}"), 403, "new version with infected content")
        assert api.get(f"/Binary/{clean_id}/_history/1").content == clean  # the old version stays clean

        # An expunged id written again starts at version 1 with its own content's verdict, not the old one's.
        reused = f"reused-{backend}"
        assert api.put(f"/Binary/{reused}", content=malware,
                       headers={"Content-Type": "application/octet-stream"}).status_code == 201
        _wait_status(api, reused, "infected")
        expunged = server.cli("expunge", f"Binary/{reused}")
        assert expunged.returncode == 0, expunged.stderr
        fresh = os.urandom(80_000)
        assert api.put(f"/Binary/{reused}", content=fresh,
                       headers={"Content-Type": "application/octet-stream"}).status_code == 201
        assert _scan_status(api, reused)["status"] in ("pending", "clean")
        _wait_status(api, reused, "clean")
        assert api.get(f"/Binary/{reused}").content == fresh
    jobs = server.cli("jobs", "list", "--kind", "scan", "--json", "--limit", "1000")
    assert jobs.returncode == 0, jobs.stderr
    # One scan through clamd per content; later holdings took the verdict over ("scanned": false).
    scans = [j for j in json.loads(jobs.stdout)["jobs"] if j["state"] == "done" and j["result"].get("scanned", True)]
    subjects = [j["subject"] for j in scans]
    assert subjects.count(f"sha256:{hashlib.sha256(malware).hexdigest()}") == 1
    assert subjects.count(f"sha256:{hashlib.sha256(EICAR).hexdigest()}") == 1


def test_clamd_down_is_error_retried_with_backoff_then_clean(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    require_clamd()
    daemon = Clamd(tmp_path / "clamd")
    (tmp_path / "clamd").mkdir()
    server = server_factory("sqlite", scan_mode="block", scan_clamd_url=daemon.tcp_url, **FAST_RETRIES)
    try:
        with server.api() as api:
            binary_id, url = _upload(api, os.urandom(100_000))
            _wait_status(api, binary_id, "error")
            for r in (api.get(f"/Binary/{binary_id}"), httpx.get(url)):
                _assert_outcome(r, 423, "content whose scan failed")
                assert "scan status error" in r.text
            jobs = json.loads(server.cli("jobs", "list", "--kind", "scan", "--json").stdout)["jobs"]
            assert jobs and jobs[0]["state"] in ("pending", "running") and "not reachable" in (jobs[0]["error"] or "")
            daemon.start()
            _wait_status(api, binary_id, "clean")
            assert api.get(f"/Binary/{binary_id}").status_code == 200
            done = json.loads(server.cli("jobs", "list", "--kind", "scan", "--json").stdout)["jobs"][0]
            assert done["state"] == "done" and done["attempts"] >= 2 and done["result"] == {"state": "clean"}
    finally:
        daemon.stop()


def test_pending_content_is_423_in_block_mode_and_served_in_record_mode(
        tmp_path: Path, server_factory: Callable[..., ServerProcess], clamd: Clamd) -> None:
    # No job loop: the content stays pending.
    blocking = server_factory("sqlite", scan_mode="block", scan_clamd_url=clamd.unix_url, job_workers=0)
    with blocking.api() as api:
        binary_id, url = _upload(api, b"waiting for its scan" * 10_000)
        assert _scan_status(api, binary_id)["status"] == "pending"
        assert binary_id in _found(api, {"scan-status": "pending"})
        for r in (api.get(f"/Binary/{binary_id}"), httpx.get(url),
                  api.get(f"/Binary/{binary_id}/$binary-access-read")):
            _assert_outcome(r, 423, "pending content")
            assert "waiting for its malware scan" in r.text
    recording = server_factory("sqlite", scan_mode="record", scan_clamd_url=clamd.unix_url)
    with recording.api() as api:
        binary_id, url = _upload(api, malware_sample())
        _wait_status(api, binary_id, "infected")
        assert api.get(f"/Binary/{binary_id}").content == malware_sample()  # record mode only records
        assert httpx.get(url).status_code == 200
        resource = api.get(f"/Binary/{binary_id}", headers={"Accept": FHIR_JSON}).json()
        [ext] = [e for e in resource["meta"]["extension"] if e["url"].endswith(EXTENSION_PATH)]
        assert {"url": "status", "valueCode": "infected"} in ext["extension"]


def test_scan_off_shows_nothing_and_lists_the_parameter(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite")
    with server.api() as api:
        binary_id, _ = _upload(api, malware_sample())
        resource = api.get(f"/Binary/{binary_id}", headers={"Accept": FHIR_JSON}).json()
        assert not [e for e in resource.get("meta", {}).get("extension", []) if e["url"].endswith(EXTENSION_PATH)]
        assert api.get(f"/Binary/{binary_id}").content == malware_sample()
        binary = next(r for r in api.get("/metadata").json()["rest"][0]["resource"] if r["type"] == "Binary")
        listed = next(p for p in binary["searchParam"] if p["name"] == "scan-status")
        assert listed["type"] == "token" and listed["definition"] == f"{api.base}/SearchParameter/Binary-scan-status"
        # Both definitions resolve at their canonical URLs (and are valid R4: every response is checked).
        param = api.get(listed["definition"])
        assert param.status_code == 200 and param.json()["code"] == "scan-status"
        assert param.json()["url"] == listed["definition"]
        extension = api.get(f"{api.base}{EXTENSION_PATH}")
        assert extension.status_code == 200 and extension.json()["url"] == f"{api.base}{EXTENSION_PATH}"
        assert extension.json()["type"] == "Extension"
        # Other ids of these types are read from storage as before.
        assert api.get("/StructureDefinition/not-ours").status_code == 404
        # A copy of the extension sent in a write is never shown as a verdict, with scanning off too.
        forged = {"url": api.base + EXTENSION_PATH, "extension": [{"url": "status", "valueCode": "clean"}]}
        doc = api.post("/DocumentReference", json={"resourceType": "DocumentReference", "status": "current",
                                                   "content": [{"attachment": {"url": f"Binary/{binary_id}",
                                                                               "extension": [forged]}}]})
        assert doc.status_code == 201, doc.text
        for r in (api.get(f"/DocumentReference/{doc.json()['id']}"),
                  api.get("/DocumentReference", params={"_id": doc.json()["id"]})):
            assert EXTENSION_PATH not in r.text, r.text


def test_content_above_the_limits_is_skipped(tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    require_clamd()
    (tmp_path / "small").mkdir()
    # clamd itself refuses streams above 150 kB; fhirvault's own limit is 300 kB.
    small = Clamd(tmp_path / "small", stream_max_bytes=150_000).start()
    try:
        server = server_factory("sqlite", scan_mode="block", scan_clamd_url=small.unix_url,
                                scan_max_bytes=300_000, **FAST_RETRIES)
        with server.api() as api:
            over_ours, _ = _upload(api, os.urandom(400_000))
            over_clamds, _ = _upload(api, malware_sample())  # 200 KiB of the hash-signed file: never looked at
            under, _ = _upload(api, os.urandom(100_000))
            for binary_id in (over_ours, over_clamds):
                _wait_status(api, binary_id, "skipped")
                assert api.get(f"/Binary/{binary_id}").status_code == 200  # skipped is served, as documented
            _wait_status(api, under, "clean")
            assert {over_ours, over_clamds} <= _found(api, {"scan-status": "skipped"})
    finally:
        small.stop()


def test_scan_command_scans_existing_content_and_rescans_after_a_signature_update(
        tmp_path: Path, clamd: Clamd) -> None:
    require_clamd()
    (tmp_path / "clamd").mkdir()
    daemon = Clamd(tmp_path / "clamd")
    suspect = os.urandom(90_000)
    data_dir = tmp_path / "data"
    unscanned = ServerProcess(data_dir, settings_env()).start()  # SCAN_MODE off: nothing is recorded
    try:
        with unscanned.api() as api:
            old_id, _ = _upload(api, malware_sample())
            suspect_id, _ = _upload(api, suspect)
            doc = api.post("/DocumentReference", json={
                "resourceType": "DocumentReference", "status": "current",
                "content": [{"attachment": {"contentType": "text/plain",
                                            "data": base64.b64encode(EICAR).decode()}}]})
            assert doc.status_code == 201
    finally:
        unscanned.stop()
    daemon.start()
    scanning = ServerProcess(data_dir, settings_env(scan_mode="block", scan_clamd_url=daemon.unix_url,
                                                    **FAST_RETRIES))
    try:
        assert "SCAN_MODE is off" in ServerProcess(data_dir, settings_env()).cli("scan").stderr
        scanning.start()
        with scanning.api() as api:
            # Content stored before scanning was on is held back until scanned.
            _assert_outcome(api.get(f"/Binary/{old_id}"), 423, "content stored before scanning")
            done = scanning.cli("scan")
            assert done.returncode == 0, done.stderr
            assert "queued 3 scans" in done.stdout, done.stdout
            assert _wait_status(api, old_id, "infected")["signature"].startswith(TEST_FILE_SIGNATURE)
            _wait_status(api, suspect_id, "clean")
            path = "DocumentReference.content%5B0%5D.attachment"
            _assert_outcome(_eventually(lambda: api.get(
                f"/DocumentReference/{doc.json()['id']}/$binary-access-read?path={path}"), 403), 403,
                "inline data stored before scanning")
            # Nothing left to scan: a plain `scan` queues nothing.
            assert "queued 0 scans" in scanning.cli("scan").stdout
            # A signature update names the suspect file; clamd reloads, a rescan finds it.
            with open(daemon.db_dir / "fhirvault-test.hdb", "a") as fh:
                fh.write(f"{hashlib.md5(suspect).hexdigest()}:{len(suspect)}:Fhirvault.Test.Updated\n")
            daemon.stop()
            daemon.start()
            assert api.get(f"/Binary/{suspect_id}").status_code == 200  # the verdict stays until replaced
            rescan = scanning.cli("scan", "--rescan-all")
            assert rescan.returncode == 0 and "queued 3 scans" in rescan.stdout, rescan.stdout + rescan.stderr
            assert _wait_status(api, suspect_id, "infected")["signature"].startswith("Fhirvault.Test.Updated")
            _assert_outcome(api.get(f"/Binary/{suspect_id}"), 403, "content found infected by a rescan")
    finally:
        scanning.stop()
        daemon.stop()


def test_scan_settings_are_checked_at_start(tmp_path: Path) -> None:
    """A SCAN_MODE or SCAN_CLAMD_URL that is not one is one clear line and exit status 2, before anything runs."""
    from tests.test_cli_correctness import assert_one_clear_line, serve

    assert_one_clear_line(serve(tmp_path, env={"FHIRVAULT_SCAN_MODE": "quarantine"}), 2, "SCAN_MODE", "'quarantine'")
    assert_one_clear_line(serve(tmp_path, env={"FHIRVAULT_SCAN_MODE": "block",
                                               "FHIRVAULT_SCAN_CLAMD_URL": "http://127.0.0.1:3310"}), 2,
                          "SCAN_CLAMD_URL", "tcp://host:port")


def _attachments_with_status(body: Any, base: str) -> list[tuple[dict[str, Any], str]]:
    """Every Attachment-like object in a JSON answer that carries the scan-status extension, with its status."""
    found: list[tuple[dict[str, Any], str]] = []
    if isinstance(body, dict):
        for ext in body.get("extension", []) if isinstance(body.get("extension"), list) else []:
            if isinstance(ext, dict) and ext.get("url") == base + EXTENSION_PATH:
                found.append((body, next(p["valueCode"] for p in ext["extension"] if p["url"] == "status")))
        for value in body.values():
            found += _attachments_with_status(value, base)
    elif isinstance(body, list):
        for value in body:
            found += _attachments_with_status(value, base)
    return found


def test_block_mode_leaves_held_back_inline_attachment_data_out_of_every_json_answer(
        clamd: Clamd, server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", scan_mode="block", scan_clamd_url=clamd.unix_url, **FAST_RETRIES)
    reader = server.create_client("attachment-reader", "system/*.rs")
    reader_headers = {"Authorization": f"Bearer {server.token(reader['client_id'], reader['client_secret'])}"}
    eicar_b64 = base64.b64encode(EICAR).decode()
    clean = b"an ordinary letter, nothing to see"
    clean_b64 = base64.b64encode(clean).decode()
    with server.api() as api, FhirApi(server.base, headers=reader_headers) as other:
        patient = api.post("/Patient", json={"resourceType": "Patient", "photo": [
            {"contentType": "text/plain", "data": eicar_b64}]})
        assert patient.status_code == 201, patient.text
        pid = patient.json()["id"]
        # The answer of a write (return=representation) goes through the same read step: the content is
        # still pending then, so its data is left out there too.
        doc = api.post("/DocumentReference", headers={"Prefer": "return=representation"}, json={
            "resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{pid}"},
            "content": [{"attachment": {"contentType": "text/plain", "title": "bad", "data": eicar_b64}},
                        {"attachment": {"contentType": "text/plain", "data": clean_b64}}]})
        assert doc.status_code == 201, doc.text
        doc_id = doc.json()["id"]
        echoed = doc.json()["content"][0]["attachment"]
        assert "data" not in echoed and echoed["size"] == len(EICAR), echoed
        assert [s for _, s in _attachments_with_status(doc.json(), api.base)][0] == "pending"
        media = api.post("/Media", json={"resourceType": "Media", "status": "completed",
                                         "subject": {"reference": f"Patient/{pid}"},
                                         "content": {"contentType": "text/plain", "data": eicar_b64}})
        assert media.status_code == 201, media.text
        media_id = media.json()["id"]

        def doc_status() -> list[str]:
            return [s for _, s in _attachments_with_status(api.get(f"/DocumentReference/{doc_id}").json(), api.base)]

        deadline = time.monotonic() + 60
        while doc_status() != ["infected", "clean"]:
            assert time.monotonic() < deadline, doc_status()
            time.sleep(0.1)

        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"DocumentReference/{doc_id}"}},
            {"request": {"method": "GET", "url": f"Media?_id={media_id}"}}]}
        reads: dict[str, Callable[[dict[str, str]], httpx.Response]] = {
            "read": lambda h: api.get(f"/DocumentReference/{doc_id}", headers=h),
            "vread": lambda h: api.get(f"/DocumentReference/{doc_id}/_history/1", headers=h),
            "history": lambda h: api.get(f"/DocumentReference/{doc_id}/_history", headers=h),
            "type history": lambda h: api.get("/DocumentReference/_history", headers=h),
            "search _id": lambda h: api.get("/DocumentReference", params={"_id": doc_id}, headers=h),
            "search _include": lambda h: api.get("/DocumentReference", headers=h, params={
                "_id": doc_id, "_include": "DocumentReference:subject"}),
            "Media search": lambda h: api.get("/Media", params={"_id": media_id}, headers=h),
            "Media JSON read": lambda h: api.get(f"/Media/{media_id}", headers={"Accept": FHIR_JSON, **h}),
            "Patient read": lambda h: api.get(f"/Patient/{pid}", headers=h),
            "$everything": lambda h: api.get(f"/Patient/{pid}/$everything", headers=h),
            "batch": lambda h: api.post("", json=batch, headers=h),
        }
        for what, read in reads.items():
            r = read({})
            assert r.status_code == 200, f"{what}: {r.status_code} {r.text[:300]}"
            assert eicar_b64 not in r.text, f"{what} served the infected data"
            marked = _attachments_with_status(r.json(), api.base)
            infected = [a for a, s in marked if s == "infected"]
            assert infected, f"{what}: no Attachment says why its data is missing: {r.text[:500]}"
            for att in infected:
                assert "data" not in att and att["size"] == len(EICAR) and att["contentType"] == "text/plain", what
                assert base64.b64decode(att["hash"]) == hashlib.sha1(EICAR).digest(), what
            # Explicit "false" is no override; a non-admin asking gets nothing either.
            assert eicar_b64 not in read({"X-Scan-Override": "false"}).text, what
            # The administrative client that asks explicitly gets the data.
            shown = read({"X-Scan-Override": "true"})
            assert shown.status_code == 200 and eicar_b64 in shown.text, f"{what} with override"
        for path in (f"/DocumentReference/{doc_id}", f"/Media/{media_id}"):
            r = other.get(path, headers={"Accept": FHIR_JSON, "X-Scan-Override": "true"})
            assert r.status_code == 200 and eicar_b64 not in r.text, f"non-admin override of {path}"
        # Clean inline data is served, with its verdict.
        got = api.get(f"/DocumentReference/{doc_id}").json()["content"][1]["attachment"]
        assert got["data"] == clean_b64
        # A forged scan-status extension sent in a write is not kept: the verdict shown is the server's.
        forged = {"url": api.base + EXTENSION_PATH, "extension": [{"url": "status", "valueCode": "clean"}]}
        sent = api.get(f"/DocumentReference/{doc_id}", headers={"X-Scan-Override": "true"}).json()
        sent["content"][0]["attachment"]["extension"] = [forged]
        put = api.put(f"/DocumentReference/{doc_id}", json=sent)
        assert put.status_code == 200, put.text
        assert eicar_b64 not in put.text
        again = api.get(f"/DocumentReference/{doc_id}").json()["content"][0]["attachment"]
        assert "data" not in again and len(again["extension"]) == 1, again
        # A transaction's answers go through the same step.
        tx = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:5b8e8a9e-0f6c-4f7b-9d55-1d7c2f1b0a11",
             "resource": {"resourceType": "Media", "status": "completed",
                          "content": {"contentType": "text/plain", "data": eicar_b64}},
             "request": {"method": "POST", "url": "Media"}}]}, headers={"Prefer": "return=representation"})
        assert tx.status_code == 200, tx.text
        assert eicar_b64 not in tx.text


@pytest.mark.parametrize("value", ["1", "yes", "no", "", "true, true"])
def test_scan_override_header_other_than_true_or_false_is_400(
        value: str, server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", scan_mode="block", job_workers=0)
    with server.api() as api:
        binary_id, url = _upload(api, b"some bytes")
        for what, r in (("JSON search", api.get("/Binary", params={"_id": binary_id},
                                                headers={"X-Scan-Override": value})),
                        ("raw read", api.get(f"/Binary/{binary_id}", headers={"X-Scan-Override": value})),
                        ("signed URL", httpx.get(url, headers={"X-Scan-Override": value}))):
            _assert_outcome(r, 400, f"{what} with X-Scan-Override: {value!r}")
            assert "X-Scan-Override" in r.text, what
        for ok in ("false", "FALSE", "true"):
            r = api.get("/Binary", params={"_id": binary_id}, headers={"X-Scan-Override": ok})
            assert r.status_code == 200, (ok, r.text)


def test_block_mode_holds_back_the_data_of_binaries_inside_other_resources(
        clamd: Clamd, server_factory: Callable[..., ServerProcess]) -> None:
    """A Binary in a stored Bundle's entries or contained in a resource holds content as much as an
    Attachment does: scanned, and its data left out while held back, with the verdict on its meta."""
    server = server_factory("sqlite", scan_mode="block", scan_clamd_url=clamd.unix_url, **FAST_RETRIES)
    eicar_b64 = base64.b64encode(EICAR).decode()
    clean_b64 = base64.b64encode(b"a clean letter inside a Bundle").decode()
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:7d3c1a52-2f2e-4f57-9a43-0b8a3f0c9e01",
         "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": eicar_b64}},
        {"fullUrl": "urn:uuid:7d3c1a52-2f2e-4f57-9a43-0b8a3f0c9e02",
         "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": clean_b64}}]}
    contained = {"resourceType": "Patient",
                 "contained": [{"resourceType": "Binary", "id": "b", "contentType": "text/plain", "data": eicar_b64}],
                 "extension": [{"url": "http://example.org/letter", "valueReference": {"reference": "#b"}}]}
    with server.api() as api:
        stored = api.post("/Bundle", json=bundle, headers={"Prefer": "return=representation"})
        assert stored.status_code == 201, stored.text
        assert eicar_b64 not in stored.text  # pending while the scan runs: held back already
        bundle_id = stored.json()["id"]
        patient = api.post("/Patient", json=contained)
        assert patient.status_code == 201, patient.text
        pid = patient.json()["id"]

        def statuses(body: dict[str, Any]) -> list[str]:
            return [s for _, s in _attachments_with_status(body, api.base)]

        deadline = time.monotonic() + 60
        while statuses(api.get(f"/Bundle/{bundle_id}").json()) != ["infected", "clean"]:
            assert time.monotonic() < deadline, api.get(f"/Bundle/{bundle_id}").text[:500]
            time.sleep(0.1)
        for what, r in {"read": api.get(f"/Bundle/{bundle_id}"),
                        "search": api.get("/Bundle", params={"_id": bundle_id}),
                        "history": api.get(f"/Bundle/{bundle_id}/_history"),
                        "contained": api.get(f"/Patient/{pid}"),
                        "contained search": api.get("/Patient", params={"_id": pid})}.items():
            assert r.status_code == 200 and eicar_b64 not in r.text, f"{what} served the infected data"
            assert "infected" in statuses(r.json()), f"{what}: no verdict says why the data is missing"
        kept = api.get(f"/Bundle/{bundle_id}").json()["entry"][1]["resource"]
        assert kept["data"] == clean_b64
        shown = api.get(f"/Bundle/{bundle_id}", headers={"X-Scan-Override": "true"})
        assert eicar_b64 in shown.text
