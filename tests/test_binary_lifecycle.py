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
    generated_chunks,
    peak_rss_bytes,
    pseudo_random,
    shared_binary_server,
    stored_keys,
    wait_until,
)
from tests.support.server import FhirApi, ServerProcess

LARGE = pseudo_random(300_000, seed=4)
MiB = 1024 * 1024


def nothing_new(server: ServerProcess, binaries: int, rows: list, keys: set) -> bool:
    return binary_count(server) == binaries and blob_rows(server) == rows and stored_keys(server) == keys


@pytest.fixture(scope="session")
def limited_server(storage_mode: str, database: str, server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(database, storage_mode=storage_mode, max_binary_bytes=200_000, max_json_bytes=100_000)


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
    total = 8 * MiB
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


@pytest.mark.parametrize("mode", ["filesystem", "database"])
def test_sweeper_removes_stale_pending_blobs_only(mode: str, server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", storage_mode=mode, pending_blob_grace_seconds=1)
    with server.api() as api:
        kept = api.post("/Binary", content=LARGE, headers={"Content-Type": "image/png"}).json()["id"]
    # the leftovers of an upload that died with its server: a pending row and its bytes
    key = "0123456789abcdef0123456789abcdef"
    with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
        conn.execute("INSERT INTO blobs (id, state, backend, storage_key, created) VALUES (?, 'pending', ?, ?, 0)",
                     (key, mode, key))
        if mode == "database":
            conn.execute("INSERT INTO blob_chunks (blob_key, seq, data) VALUES (?, 0, ?)", (key, b"junk"))
    if mode == "filesystem":
        path = server.data_dir / "blobs" / key[:2] / key[2:4] / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"junk")
    assert key in stored_keys(server)
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


@pytest.mark.parametrize("mode", ["inline", "database", "filesystem"])
def test_200_mib_round_trip_streams(mode: str, server_factory: Callable[..., ServerProcess]) -> None:
    server = shared_binary_server(server_factory, mode, "sqlite")
    total = 200 * MiB
    sent = hashlib.sha256()

    def body():
        for chunk in generated_chunks(total):
            sent.update(chunk)
            yield chunk

    with server.api(timeout=600) as api:
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
            assert peak_rss_bytes(server) < 180 * MiB


def test_json_read_of_a_large_binary_has_the_exact_length(bapi: FhirApi) -> None:
    r = bapi.post("/Binary", content=LARGE, headers={"Content-Type": "image/png"})
    bid = r.json()["id"]
    head = bapi.head(f"/Binary/{bid}", headers={"Accept": "application/fhir+json"})
    got = bapi.get(f"/Binary/{bid}", headers={"Accept": "application/fhir+json"})
    assert head.headers["Content-Length"] == got.headers["Content-Length"] == str(len(got.content))
    assert base64.b64decode(got.json()["data"]) == LARGE


