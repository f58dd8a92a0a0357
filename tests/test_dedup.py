"""Content deduplication through a real server: identical content is stored once in every storage mode and
on every upload path, references are counted right under concurrency, expunge, the sweeper and a crash,
DEDUP_ENABLED=false keeps separate copies, and nothing tells an uploader what others stored."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.binary import _sql, mode_settings, stored_keys, wait_until
from tests.support.origin import OriginServer, content_chunks
from tests.support.server import FhirApi, ServerProcess

FHIR_JSON = {"Content-Type": "application/fhir+json"}
MiB = 1024 * 1024
# Ingestion may fetch from the test's own loopback origin.
SETTINGS = {"ingest_allow_hosts": "127.0.0.1", "ingest_backoff_seconds": 0.1}

_servers: dict[tuple[str, str], ServerProcess] = {}


def dedup_server(factory: Callable[..., ServerProcess], request: pytest.FixtureRequest, mode: str,
                 database: str) -> ServerProcess:
    """One dedup server per (mode, database) for this module."""
    if (mode, database) not in _servers:
        _servers[(mode, database)] = factory(database, **mode_settings(request, mode), **SETTINGS)
    return _servers[(mode, database)]


def content_rows(server: ServerProcess, data: bytes) -> list[tuple[str, str, int, str]]:
    """(id, state, refs, storage_key) of the blob rows holding `data`."""
    sha = hashlib.sha256(data).hexdigest()
    return [(r[0], r[1], int(r[2]), r[3]) for r in
            _sql(server, "SELECT id, state, refs, storage_key FROM blobs WHERE sha256 = ? ORDER BY id", (sha,))]


def blob_states(server: ServerProcess) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in _sql(server, "SELECT state, count(*) FROM blobs GROUP BY state")}


def referenced_counts(server: ServerProcess) -> dict[str, int]:
    """blob id -> how many versions refer to it, counted from the versions themselves."""
    return {r[0]: int(r[1]) for r in _sql(
        server, "SELECT blob_id, count(*) FROM resource_versions WHERE blob_id IS NOT NULL GROUP BY blob_id")}


def assert_counts_consistent(server: ServerProcess) -> None:
    """Every committed blob's refs equals the versions that refer to it, and every referenced blob is
    committed: the invariant concurrency, expunge and crashes must keep."""
    committed = {r[0]: int(r[1]) for r in _sql(server, "SELECT id, refs FROM blobs WHERE state = 'committed'")}
    referenced = referenced_counts(server)
    assert set(referenced) <= set(committed), "a version refers to a blob that is not committed"
    assert {b: n for b, n in committed.items() if n} == referenced


def upload(api: FhirApi, data: bytes, **headers: str) -> httpx.Response:
    r = api.post("/Binary", content=data, headers={"Content-Type": "application/octet-stream", **headers})
    assert r.status_code == 201, r.text
    return r


def binary_id_of(url: str) -> str:
    """The Binary id an Attachment url names: `Binary/{id}` or a signed `.../storage/{id}/{version}?...`."""
    if "/storage/" in url:
        return url.split("/storage/", 1)[1].split("/")[0]
    return url.removeprefix("Binary/").split("/")[0]


def expunge(server: ServerProcess, ref: str) -> None:
    done = server.cli("expunge", ref)
    assert done.returncode == 0, done.stderr


def stats(server: ServerProcess) -> dict[str, Any]:
    done = server.cli("storage", "stats", "--json")
    assert done.returncode == 0, done.stderr
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def settled_keys(server: ServerProcess, expected: int, before: set[str]) -> set[str]:
    """The keys stored since `before`, once the duplicates' own copies are removed (in the background)."""
    wait_until(lambda: len(stored_keys(server) - before) == expected,
               f"{expected} new stored objects (duplicates' copies removed)")
    return stored_keys(server) - before


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    with OriginServer() as server:
        yield server


# -- every mode, every path ----------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "database"), [
    ("inline", "sqlite"), ("database", "sqlite"), ("filesystem", "sqlite"), ("s3", "sqlite"),
    ("database", "postgres"), ("filesystem", "postgres"), ("s3", "postgres")])
def test_every_upload_path_stores_identical_content_once(
        mode: str, database: str, server_factory: Callable[..., ServerProcess], request: pytest.FixtureRequest,
        origin: OriginServer) -> None:
    server = dedup_server(server_factory, request, mode, database)
    size = 300_000  # above INLINE_MAX_BYTES: a blob in every mode but inline
    seed = 1000 + len(_servers)  # content no earlier test put on this server
    data = b"".join(content_chunks(size, seed))
    before = stored_keys(server)
    with server.api() as api:
        first = upload(api, data)
        binaries = [first.json()["id"]]
        # a second raw upload, by a request that names another securityContext
        patient = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON).json()["id"]
        again = upload(api, data, **{"X-Security-Context": f"Patient/{patient}"})
        binaries.append(again.json()["id"])
        # an update of another Binary to the same content
        other = upload(api, os.urandom(100_000)).json()["id"]
        assert api.put(f"/Binary/{other}", content=data, headers={"Content-Type": "image/png"}).status_code == 200
        binaries.append(other)
        # FHIR JSON with base64 data
        r = api.post("/Binary", json={"resourceType": "Binary", "contentType": "image/png",
                                      "data": base64.b64encode(data).decode()}, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        binaries.append(r.json()["id"])
        # $binary-access-write
        doc = api.post("/DocumentReference", headers=FHIR_JSON, json={
            "resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "image/png"}}]}).json()["id"]
        r = api.post(f"/DocumentReference/{doc}/$binary-access-write", content=data,
                     params={"path": "DocumentReference.content[0].attachment"}, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        binaries.append(binary_id_of(r.json()["content"][0]["attachment"]["url"]))
        # Attachment data moved out of a resource into a Binary of its own
        r = api.post("/DocumentReference", headers=FHIR_JSON, json={
            "resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "image/png", "data": base64.b64encode(data).decode()}}]})
        assert r.status_code == 201, r.text
        if mode != "inline":
            moved = api.get(f"/DocumentReference/{r.json()['id']}").json()["content"][0]["attachment"]["url"]
            binaries.append(binary_id_of(moved))
        # ingestion from an external URL
        media = api.post("/Media", headers=FHIR_JSON, json={
            "resourceType": "Media", "status": "completed",
            "content": {"contentType": "image/png", "url": f"{origin.url}/file/{size}?seed={seed}"}}).json()["id"]

        def ingested() -> bool:
            url = api.get(f"/Media/{media}").json()["content"].get("url", "")
            return "/storage/" in url

        wait_until(ingested, "the ingestion job to store the Media's content", timeout=60)
        binaries.append(binary_id_of(api.get(f"/Media/{media}").json()["content"]["url"]))

        for bid in binaries:
            got = api.get(f"/Binary/{bid}")
            assert got.status_code == 200 and got.content == data, bid
            assert got.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        # the Binary keeps its own securityContext; sharing content shares nothing else
        assert api.get(f"/Binary/{binaries[1]}", params={"_format": "json"}).json()["securityContext"] == {
            "reference": f"Patient/{patient}"}
        assert "securityContext" not in api.get(f"/Binary/{binaries[0]}", params={"_format": "json"}).json()
    assert len(set(binaries)) == len(binaries) == (7 if mode != "inline" else 6)

    if mode == "inline":
        # Inline content is part of its resource (deduplication concerns blobs): nothing went to a store.
        assert content_rows(server, data) == [] and stored_keys(server) == before
        return
    # one stored object (file / chunk rows / S3 object) for the content, however many Binaries hold it
    new_keys = settled_keys(server, 2, before)  # the content, and the first version of `other`
    rows = content_rows(server, data)
    assert [(state, refs) for _, state, refs, _ in rows] == [("committed", len(binaries))], rows
    assert rows[0][3] in new_keys
    if mode == "filesystem":
        root = server.data_dir / "blobs"
        assert len([p for p in root.rglob("*") if p.is_file() and p.name in new_keys]) == 2
    assert_counts_consistent(server)


def test_a_duplicate_is_answered_like_new_content(server_factory: Callable[..., ServerProcess],
                                                  request: pytest.FixtureRequest) -> None:
    server = dedup_server(server_factory, request, "filesystem", "sqlite")
    data, fresh = os.urandom(200_000), os.urandom(200_000)
    with server.api() as api:
        upload(api, data)
        duplicate = upload(api, data)
        new = upload(api, fresh)
    assert duplicate.status_code == new.status_code == 201
    ignored = {"date"}
    assert sorted(set(duplicate.headers) - ignored) == sorted(set(new.headers) - ignored)
    assert sorted(duplicate.json()) == sorted(new.json())
    assert duplicate.json()["meta"]["versionId"] == new.json()["meta"]["versionId"] == "1"
    assert len(duplicate.content) == len(new.content)


def test_shared_content_does_not_share_access(server_factory: Callable[..., ServerProcess],
                                              request: pytest.FixtureRequest) -> None:
    """Patient B uploading what Patient A's Binary holds gets a Binary of its own, and still no access to
    A's; A's Binary keeps A's securityContext."""
    server = dedup_server(server_factory, request, "filesystem", "sqlite")
    data = os.urandom(150_000)
    with server.api() as api:
        a = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON).json()["id"]
        b = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON).json()["id"]
        binary_a = upload(api, data, **{"X-Security-Context": f"Patient/{a}"}).json()["id"]
    client = server.create_client("dedup-b", "patient/*.cruds", f"Patient/{b}")
    token = server.token(client["client_id"], client["client_secret"])
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as as_b:
        r = as_b.post("/Binary", content=data, headers={"Content-Type": "application/octet-stream",
                                                        "X-Security-Context": f"Patient/{b}"})
        assert r.status_code == 201, r.text
        binary_b = r.json()["id"]
        assert r.json()["securityContext"] == {"reference": f"Patient/{b}"}
        assert as_b.get(f"/Binary/{binary_b}").content == data
        assert as_b.get(f"/Binary/{binary_a}").status_code == 404
    with server.api() as api:
        assert api.get(f"/Binary/{binary_a}", params={"_format": "json"}).json()["securityContext"] == {
            "reference": f"Patient/{a}"}
    assert [(s, n) for _, s, n, _ in content_rows(server, data)] == [("committed", 2)]


# -- concurrency -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_concurrent_identical_uploads_end_with_one_blob(database: str, server_factory: Callable[..., ServerProcess],
                                                        request: pytest.FixtureRequest) -> None:
    server = dedup_server(server_factory, request, "filesystem", database)
    data = os.urandom(1 * MiB)
    uploads = 16
    before = stored_keys(server)
    start = threading.Barrier(uploads)
    headers = {**server.auth_headers(), "Content-Type": "application/octet-stream"}

    def one(_: int) -> str:
        start.wait()
        r = httpx.post(f"{server.base}/Binary", content=data, headers=headers, timeout=120)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(uploads) as pool:
        ids = list(pool.map(one, range(uploads)))
    assert len(set(ids)) == uploads
    rows = content_rows(server, data)
    assert [(s, n) for _, s, n, _ in rows] == [("committed", uploads)], rows
    assert settled_keys(server, 1, before) == {rows[0][3]}
    with server.api() as api:
        for bid in ids:
            assert api.get(f"/Binary/{bid}").content == data
    assert_counts_consistent(server)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_expunge_racing_identical_uploads_keeps_every_reference(
        database: str, server_factory: Callable[..., ServerProcess], request: pytest.FixtureRequest) -> None:
    """An expunge that removes the last reference to some content while new uploads of that content commit:
    whichever wins, every upload's Binary reads its bytes and the counts agree with the versions."""
    server = dedup_server(server_factory, request, "filesystem", database)
    headers = {**server.auth_headers(), "Content-Type": "application/octet-stream"}
    for _ in range(3):
        data = os.urandom(512 * 1024)
        with server.api() as api:
            doomed = upload(api, data).json()["id"]

        def one(body: bytes) -> str:
            r = httpx.post(f"{server.base}/Binary", content=body, headers=headers, timeout=120)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        with ThreadPoolExecutor(5) as pool:
            gone = pool.submit(expunge, server, f"Binary/{doomed}")
            ids = list(pool.map(one, [data] * 4))
            gone.result()
        with server.api() as api:
            assert api.get(f"/Binary/{doomed}").status_code == 404
            for bid in ids:
                assert api.get(f"/Binary/{bid}").content == data
        committed = [(s, n) for _, s, n, _ in content_rows(server, data) if s == "committed"]
        assert committed == [("committed", 4)], content_rows(server, data)
        assert_counts_consistent(server)


# -- expunge and the sweeper -------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "database"), [("database", "sqlite"), ("filesystem", "postgres"),
                                                ("s3", "sqlite")])
def test_expunge_keeps_shared_bytes_until_the_last_reference(
        mode: str, database: str, server_factory: Callable[..., ServerProcess], request: pytest.FixtureRequest) -> None:
    server = dedup_server(server_factory, request, mode, database)
    data = os.urandom(200_000)
    with server.api() as api:
        one = upload(api, data).json()["id"]
        two = upload(api, data).json()["id"]
        # a metadata-only change of `two`: a second version referring to the same blob
        r = api.put(f"/Binary/{two}", json={"resourceType": "Binary", "id": two, "contentType": "image/png"},
                    headers=FHIR_JSON)
        assert r.status_code == 200, r.text
    ((_, state, refs, key),) = content_rows(server, data)
    assert (state, refs) == ("committed", 3)
    wait_until(lambda: key in stored_keys(server), "the shared object")

    expunge(server, f"Binary/{two}")  # two versions go; `one` still refers to the bytes
    assert [(s, n) for _, s, n, _ in content_rows(server, data)] == [("committed", 1)]
    assert key in stored_keys(server)
    with server.api() as api:
        assert api.get(f"/Binary/{one}").content == data
        assert api.get(f"/Binary/{two}").status_code == 404
    assert_counts_consistent(server)

    expunge(server, f"Binary/{one}")  # the last reference: bytes and row go
    assert key not in stored_keys(server)
    assert content_rows(server, data) == []
    # the content may come again: stored anew
    with server.api() as api:
        three = upload(api, data).json()["id"]
        assert api.get(f"/Binary/{three}").content == data
    assert [(s, n) for _, s, n, _ in content_rows(server, data)] == [("committed", 1)]


@pytest.mark.parametrize("mode", ["filesystem", "database"])
def test_sweeper_never_removes_a_referenced_blob(mode: str, server_factory: Callable[..., ServerProcess],
                                                 request: pytest.FixtureRequest) -> None:
    server = server_factory("sqlite", **mode_settings(request, mode), pending_blob_grace_seconds=1,
                            leftover_scan_seconds=1)
    data = os.urandom(300_000)
    with server.api() as api:
        ids = [upload(api, data).json()["id"] for _ in range(3)]
    expunge(server, f"Binary/{ids[0]}")
    ((_, _, refs, key),) = content_rows(server, data)
    assert refs == 2

    # Proof that sweeps ran since: stale pending markers the sweeper removes, one after the other, and
    # ownerless bytes older than the grace period, which only the leftover scan removes.
    for n in range(2):
        marker = f"{n:02d}" + "f" * 30
        with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
            conn.execute("INSERT INTO blobs (id, state, backend, storage_key, created, refs) "
                         "VALUES (?, 'pending', ?, ?, 0, 0)", (marker, mode, marker))
        wait_until(lambda m=marker: not _sql(server, "SELECT id FROM blobs WHERE id = ?", (m,)), "a sweep")
    ownerless = "e" * 32
    if mode == "filesystem":
        path = server.data_dir / "blobs" / ownerless[:2] / ownerless[2:4] / ownerless
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"no owner")
        old = time.time() - 60
        os.utime(path, (old, old))
    else:
        with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
            conn.execute("INSERT INTO blob_chunks (blob_key, seq, data) VALUES (?, 0, ?)", (ownerless, b"x"))
    wait_until(lambda: ownerless not in stored_keys(server), "a leftover scan")

    assert key in stored_keys(server)
    assert [(s, n) for _, s, n, _ in content_rows(server, data)] == [("committed", 2)]
    with server.api() as api:
        for bid in ids[1:]:
            assert api.get(f"/Binary/{bid}").content == data
    assert_counts_consistent(server)


# -- a crash between staging and commit ---------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "database"), [("filesystem", "sqlite"), ("database", "postgres"),
                                                ("s3", "sqlite")])
def test_sigkill_mid_duplicate_upload_leaves_one_consistent_blob(
        mode: str, database: str, server_factory: Callable[..., ServerProcess], request: pytest.FixtureRequest) -> None:
    server = server_factory(database, **mode_settings(request, mode))
    data = os.urandom(12 * MiB)  # past one S3 part: the held upload has an unfinished multipart upload
    with server.api() as api:
        kept = upload(api, data).json()["id"]
    ((blob, _, _, key),) = content_rows(server, data)
    hold = threading.Event()
    headers = {**server.auth_headers(), "Content-Type": "application/octet-stream"}

    def held_body() -> Iterator[bytes]:
        for offset in range(0, len(data), 256 * 1024):
            if offset >= 10 * MiB:
                hold.wait()
                return
            yield data[offset:offset + 256 * 1024]

    def duplicate() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it
            httpx.post(f"{server.base}/Binary", content=held_body(), headers=headers, timeout=120)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(duplicate)
        try:
            wait_until(lambda: blob_states(server).get("pending", 0) == 1, "the duplicate to be staging")
            assert server.proc is not None
            server.proc.kill()
            server.proc.wait()
        finally:
            hold.set()
        future.result()

    server.env.update({"FHIRVAULT_PENDING_BLOB_GRACE_SECONDS": "2", "FHIRVAULT_LEFTOVER_SCAN_SECONDS": "1"})
    server.start(timeout=120)
    wait_until(lambda: set(blob_states(server)) == {"committed"}, "the stale pending blob to be swept", timeout=60)
    wait_until(lambda: key in stored_keys(server) and len(stored_keys(server)) == 1,
               "the store to hold the committed blob only", timeout=60)
    assert [(b, s, n) for b, s, n, _ in content_rows(server, data)] == [(blob, "committed", 1)]
    with server.api() as api:
        assert api.get(f"/Binary/{kept}").content == data
        again = upload(api, data).json()["id"]  # after the restart the content is still found
        assert api.get(f"/Binary/{again}").content == data
    assert [(b, s, n) for b, s, n, _ in content_rows(server, data)] == [(blob, "committed", 2)]
    wait_until(lambda: stored_keys(server) == {key}, "the duplicate's copy to be removed")
    assert_counts_consistent(server)


# -- configuration and statistics -----------------------------------------------------------------------------
def test_dedup_disabled_keeps_separate_copies(server_factory: Callable[..., ServerProcess],
                                              request: pytest.FixtureRequest) -> None:
    server = server_factory("sqlite", **mode_settings(request, "filesystem"), dedup_enabled=False)
    data = os.urandom(200_000)
    with server.api() as api:
        ids = [upload(api, data).json()["id"] for _ in range(3)]
        for bid in ids:
            assert api.get(f"/Binary/{bid}").content == data
    rows = content_rows(server, data)
    assert [(s, n) for _, s, n, _ in rows] == [("committed", 1)] * 3
    assert stored_keys(server) == {r[3] for r in rows}
    figures = stats(server)
    assert figures["dedup_enabled"] is False
    assert (figures["blobs"], figures["bytes_stored"], figures["bytes_saved"]) == (3, 3 * len(data), 0)
    expunge(server, f"Binary/{ids[0]}")
    assert len(stored_keys(server)) == 2


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_storage_stats_counts_blobs_and_bytes_saved(database: str, server_factory: Callable[..., ServerProcess],
                                                   request: pytest.FixtureRequest) -> None:
    server = server_factory(database, **mode_settings(request, "database"))
    assert (stats(server)["blobs"], stats(server)["bytes_saved"]) == (0, 0)
    data, other = os.urandom(100_000), os.urandom(70_000)
    with server.api() as api:
        for _ in range(4):
            upload(api, data)
        upload(api, other)
    figures = stats(server)
    assert figures["blobs"] == 2 and figures["references"] == 5
    assert figures["bytes_stored"] == len(data) + len(other)
    assert figures["bytes_saved"] == 3 * len(data)
    text = server.cli("storage", "stats")
    assert text.returncode == 0, text.stderr
    lines = {line[:15].strip(): line[15:].strip() for line in text.stdout.splitlines()}
    assert lines["blobs"] == "2" and lines["bytes stored"] == str(len(data) + len(other))
    assert lines["bytes saved"] == str(3 * len(data)) and lines["dedup enabled"] == "true"


def test_content_stored_under_another_storage_mode_is_not_shared(server_factory: Callable[..., ServerProcess],
                                                                 request: pytest.FixtureRequest) -> None:
    """After STORAGE_MODE changes, equal content kept by the former backend is not referred to (this server
    could not read it): the upload keeps its own copy and reads back."""
    server = server_factory("sqlite", **mode_settings(request, "filesystem"))
    data = os.urandom(150_000)
    with server.api() as api:
        upload(api, data)
    server.stop()
    server.env["FHIRVAULT_STORAGE_MODE"] = "database"
    server.start()
    with server.api() as api:
        moved = upload(api, data).json()["id"]
        assert api.get(f"/Binary/{moved}").content == data
    backends = sorted(r[0] for r in _sql(server, "SELECT backend FROM blobs WHERE state = 'committed'"))
    assert backends == ["database", "filesystem"]
    assert_counts_consistent(server)
