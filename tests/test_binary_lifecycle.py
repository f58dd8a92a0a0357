"""Binary content is never lost and never left over: limits, client disconnects, storage errors, the
sweeper, expunge, and large files streamed end to end."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.binary import (
    binary_count,
    blob_rows,
    bucket_keys,
    generated_chunks,
    mode_settings,
    peak_rss_bytes,
    pseudo_random,
    reset_peak_rss,
    s3_client,
    server_s3_client,
    shared_binary_server,
    stored_keys,
    wait_until,
)
from tests.support.s3 import SeaweedS3, unique_bucket
from tests.support.server import FhirApi, ServerProcess

LARGE = pseudo_random(300_000, seed=4)
MiB = 1024 * 1024


def nothing_new(server: ServerProcess, binaries: int, rows: list, keys: set) -> bool:
    return binary_count(server) == binaries and blob_rows(server) == rows and stored_keys(server) == keys


@pytest.fixture(scope="session")
def limited_server(storage_mode: str, database: str, server_factory: Callable[..., ServerProcess],
                   request: pytest.FixtureRequest) -> ServerProcess:
    return server_factory(database, keep=True, **mode_settings(request, storage_mode), max_binary_bytes=200_000,
                          max_json_bytes=100_000)


def test_content_over_the_limit_is_413_and_leaves_nothing(limited_server: ServerProcess) -> None:
    server = limited_server
    before = (binary_count(server), blob_rows(server), stored_keys(server))
    with server.api() as api:
        declared = api.post("/Binary", content=LARGE, headers={"Content-Type": "image/png"})
        assert declared.status_code == 413 and "200000" in declared.json()["issue"][0]["diagnostics"]

        def chunked():
            for i in range(0, len(LARGE), 16384):
                yield LARGE[i:i + 16384]

        streamed = api.post("/Binary", content=chunked(), headers={"Content-Type": "image/png"})
        assert streamed.status_code == 413
        bomb = api.post("/Binary", content=gzip.compress(bytes(5 * MiB)),
                        headers={"Content-Type": "image/png", "Content-Encoding": "gzip"})
        assert bomb.status_code == 413
        # a JSON body above MAX_JSON_BYTES: 413 pointing at the raw upload
        big_json = {"resourceType": "Binary", "contentType": "image/png",
                    "data": base64.b64encode(LARGE[:150_000]).decode()}
        r = api.post("/Binary", json=big_json, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 413 and "raw" in r.json()["issue"][0]["diagnostics"]
        # just under the limit is fine
        assert api.post("/Binary", content=LARGE[:200_000], headers={"Content-Type": "image/png"}).status_code == 201
    assert binary_count(server) == before[0] + 1


def test_client_disconnect_mid_upload_leaves_nothing(binary_server: ServerProcess) -> None:
    server = binary_server
    before = (binary_count(server), blob_rows(server), stored_keys(server))
    total = 24 * MiB  # its first half is more than one S3 part (8 MiB): s3 mode begins a multipart upload
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = (f"POST /fhir/R4/Binary HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: video/mp4\r\n"
                f"Content-Length: {total}\r\n")
        for name, value in server.auth_headers().items():
            head += f"{name}: {value}\r\n"
        sock.sendall((head + "\r\n").encode())
        for chunk in generated_chunks(total // 2, 256 * 1024):
            sock.sendall(chunk)
        if server.env["FHIRVAULT_STORAGE_MODE"] != "inline":
            # the upload is under way: its blob is registered as pending
            wait_until(lambda: any(r[1] == "pending" for r in blob_rows(server)), "a pending blob")
        if server.env["FHIRVAULT_STORAGE_MODE"] == "s3":
            # ... and a part is in the bucket, which only aborting the multipart upload removes
            wait_until(lambda: any(k.endswith("(unfinished upload)") for k in stored_keys(server)),
                       "a multipart upload under way")
    # the socket is closed with half of the body sent
    wait_until(lambda: nothing_new(server, *before), "the half upload to be cleaned up")
    with server.api() as api:
        assert api.post("/Binary", content=LARGE, headers={"Content-Type": "video/mp4"}).status_code == 201
    assert binary_count(server) == before[0] + 1


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_storage_error_leaves_nothing(database: str, server_factory: Callable[..., ServerProcess],
                                      tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the storage directory cannot be created under a file")
    server = server_factory(database, storage_mode="filesystem", storage_dir=str(blocker / "blobs"))
    before = (binary_count(server), blob_rows(server))
    with server.api() as api:
        r = api.post("/Binary", content=LARGE, headers={"Content-Type": "image/png"})
        assert r.status_code == 503
        assert "Cannot store blob" in r.json()["issue"][0]["diagnostics"]
        assert (binary_count(server), blob_rows(server)) == before
        # content small enough to stay inline does not need the store
        assert api.post("/Binary", content=b"tiny", headers={"Content-Type": "text/plain"}).status_code == 201


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_s3_storage_error_leaves_nothing(database: str, server_factory: Callable[..., ServerProcess],
                                         seaweedfs: SeaweedS3) -> None:
    # The shared gateway is not stopped (other servers use it): instead this server holds a secret key
    # the gateway does not know, so it refuses every request of this server's, as a real store would.
    wrong_secret = "wrong-" + os.urandom(16).hex()
    bucket = unique_bucket("fv-refused")
    server = server_factory(database, **{**seaweedfs.settings(bucket), "s3_secret_key": wrong_secret})
    before = (binary_count(server), blob_rows(server))
    assert before[1] == []
    with server.api() as api:
        for body in (LARGE, generated_chunks(20 * MiB)):  # one request, and one that would be multipart
            r = api.post("/Binary", content=body, headers={"Content-Type": "image/png"})
            assert r.status_code == 503, r.text
            diagnostics = r.json()["issue"][0]["diagnostics"]
            assert "S3" in diagnostics and bucket in diagnostics
            assert wrong_secret not in diagnostics and seaweedfs.access_key not in diagnostics
            # No Binary, nothing committed. The store refused the clean-up delete as well, so the blob's
            # row stays, released: the sweeper removes it once the store answers again (it cannot know
            # whether the store kept any bytes).
            assert binary_count(server) == before[0]
            assert all(row[1] == "released" for row in blob_rows(server))
        assert api.post("/Binary", content=b"tiny", headers={"Content-Type": "text/plain"}).status_code == 201
    log = server.log_path.read_text(errors="replace")
    assert wrong_secret not in log and seaweedfs.secret_key not in log
    # seen with the gateway's real credentials: the refused server left nothing in the store
    client = s3_client(seaweedfs.endpoint, seaweedfs.region, seaweedfs.access_key, seaweedfs.secret_key)
    try:
        assert bucket_keys(client, bucket) == set()
    finally:
        client.close()


@pytest.mark.parametrize("mode", ["filesystem", "database", "s3"])
def test_sweeper_removes_stale_pending_blobs_only(mode: str, server_factory: Callable[..., ServerProcess],
                                                  request: pytest.FixtureRequest) -> None:
    server = server_factory("sqlite", **mode_settings(request, mode), pending_blob_grace_seconds=1)
    with server.api() as api:
        kept = api.post("/Binary", content=LARGE, headers={"Content-Type": "image/png"}).json()["id"]
    # the leftovers of an upload that died with its server: a pending row and its bytes
    key = "0123456789abcdef0123456789abcdef"
    # The bytes first, then the row: the running sweeper may act on the (already stale) row at once.
    if mode == "filesystem":
        path = server.data_dir / "blobs" / key[:2] / key[2:4] / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"junk")
    if mode == "s3":
        client = server_s3_client(server)
        try:
            client.put_object(Bucket=server.env["FHIRVAULT_S3_BUCKET"], Key=key, Body=b"junk")
        finally:
            client.close()
    with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
        if mode == "database":
            conn.execute("INSERT INTO blob_chunks (blob_key, seq, data) VALUES (?, 0, ?)", (key, b"junk"))
    assert key in stored_keys(server)
    with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
        conn.execute("INSERT INTO blobs (id, state, backend, storage_key, created) VALUES (?, 'pending', ?, ?, 0)",
                     (key, mode, key))
    wait_until(lambda: key not in stored_keys(server) and key not in {r[0] for r in blob_rows(server)},
               "the sweeper to remove the stale pending blob")
    assert all(r[1] == "committed" for r in blob_rows(server))
    with server.api() as api:
        assert api.get(f"/Binary/{kept}").content == LARGE


def test_expunge_removes_history_and_bytes(binary_server: ServerProcess) -> None:
    server = binary_server
    before = (blob_rows(server), stored_keys(server))
    with server.api() as api:
        bid = api.post("/Binary", content=LARGE, headers={"Content-Type": "image/png"}).json()["id"]
        api.put(f"/Binary/{bid}", content=LARGE[::-1], headers={"Content-Type": "image/png"})
        other = api.post("/Binary", content=LARGE[1:], headers={"Content-Type": "image/png"}).json()["id"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
        done = subprocess.run([sys.executable, "-m", "fhirvault.cli", "expunge", f"Binary/{bid}",
                               "--data-dir", str(server.data_dir)], env={**env, **server.env},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "2 versions" in done.stdout
        assert api.get(f"/Binary/{bid}").status_code == 404
        assert api.get(f"/Binary/{bid}/_history/1").status_code == 404
        assert api.get(f"/Binary/{other}").content == LARGE[1:]
    after_rows, after_keys = blob_rows(server), stored_keys(server)
    if server.env["FHIRVAULT_STORAGE_MODE"] != "inline":
        assert len(after_rows) == len(before[0]) + 1 and len(after_keys) == len(before[1]) + 1


@pytest.mark.parametrize("mode", ["inline", "database", "filesystem", "s3"])
def test_200_mib_round_trip_streams(mode: str, server_factory: Callable[..., ServerProcess],
                                    request: pytest.FixtureRequest) -> None:
    server = shared_binary_server(server_factory, mode, "sqlite", request)
    total = 200 * MiB
    sent = hashlib.sha256()

    def body():
        for chunk in generated_chunks(total):
            sent.update(chunk)
            yield chunk

    with server.api(timeout=600) as api:
        baseline = reset_peak_rss(server)
        r = api.post("/Binary", content=body(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        bid = r.json()["id"]
        got = hashlib.sha256()
        size = 0
        with api.stream("GET", f"/Binary/{bid}") as download:
            assert download.headers["Content-Length"] == str(total)
            assert download.headers["ETag"] == f'"{sent.hexdigest()}"'
            for chunk in download.iter_bytes():
                got.update(chunk)
                size += len(chunk)
        assert size == total and got.hexdigest() == sent.hexdigest()
        if mode != "inline":
            # the JSON form streams too: base64 of all the bytes, decoded here piece by piece
            decoded = hashlib.sha256()
            with api.stream("GET", f"/Binary/{bid}", headers={"Accept": "application/fhir+json"}) as as_json:
                carry = b""
                started = False
                for chunk in as_json.iter_bytes():
                    data = carry + chunk
                    if not started:
                        marker = data.find(b'"data":"')
                        if marker < 0:
                            carry = data
                            continue
                        data = data[marker + 8:]
                        started = True
                    end = data.find(b'"')
                    if end >= 0:
                        data = data[:end]
                    cut = len(data) - len(data) % 4
                    decoded.update(base64.b64decode(data[:cut]))
                    carry = data[cut:]
                    if end >= 0:
                        break
                decoded.update(base64.b64decode(carry))
            assert decoded.hexdigest() == sent.hexdigest()
            # constant memory: the server never held the file (or its base64) whole
            assert peak_rss_bytes(server) - baseline < 64 * MiB


def test_json_read_of_a_large_binary_has_the_exact_length(bapi: FhirApi) -> None:
    r = bapi.post("/Binary", content=LARGE, headers={"Content-Type": "image/png"})
    bid = r.json()["id"]
    head = bapi.head(f"/Binary/{bid}", headers={"Accept": "application/fhir+json"})
    got = bapi.get(f"/Binary/{bid}", headers={"Accept": "application/fhir+json"})
    assert head.headers["Content-Length"] == got.headers["Content-Length"] == str(len(got.content))
    assert base64.b64decode(got.json()["data"]) == LARGE


