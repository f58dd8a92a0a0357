"""Health checks for load balancers, graceful SIGTERM, limits on slow and huge clients, and the sweeper
reclaiming bytes no blob owns."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.leftovers import s3_client, sql_rows, stored_items
from tests.support.s3 import SeaweedS3, unique_bucket
from tests.support.server import ServerProcess

RAW = {"Content-Type": "application/octet-stream"}


def test_healthz_and_readyz_answer_without_a_token(server: ServerProcess) -> None:
    for path in ("/healthz", "/readyz"):
        answer = httpx.get(f"{server.url}{path}", timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert answer.headers["Cache-Control"] == "no-store"


def test_readyz_names_a_missing_storage_directory(server_factory: Callable[..., ServerProcess],
                                                  tmp_path: Path) -> None:
    storage = tmp_path / "blobs"
    storage.mkdir()
    server = server_factory("sqlite", storage_mode="filesystem", storage_dir=str(storage))
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    storage.rename(tmp_path / "away")
    answer = httpx.get(f"{server.url}/readyz", timeout=30)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"]
    assert "blob store" in answer.json()["issue"][0]["diagnostics"]
    assert "database" not in answer.json()["issue"][0]["diagnostics"]
    (tmp_path / "away").rename(storage)
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200


def _slow_body(size: int, gate: threading.Event) -> Iterator[bytes]:
    yield b"x" * (size // 2)
    gate.wait()
    yield b"y" * (size - size // 2)


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", shutdown_timeout_seconds=60)
    headers = {**server.auth_headers(), **RAW}
    gate = threading.Event()
    result: dict[str, httpx.Response] = {}

    def upload() -> None:
        result["answer"] = httpx.post(f"{server.base}/Binary", headers=headers, timeout=120,
                                      content=_slow_body(300_000, gate))

    uploading = threading.Thread(target=upload)
    uploading.start()
    assert server.proc is not None
    # Wait until the server holds the request (its body half sent) before the signal.
    deadline = time.monotonic() + 30
    while not _pending_blobs(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pending_blobs(server) == 1
    server.proc.send_signal(signal.SIGTERM)
    # The listening socket closes: new connections are refused while the upload is still running.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the server still accepts connections after SIGTERM")
    assert server.proc.poll() is None  # still finishing the upload
    gate.set()
    uploading.join(timeout=60)
    assert result["answer"].status_code == 201, result["answer"].text
    assert server.proc.wait(timeout=60) == 0
    server.proc = None
    # What it acknowledged while shutting down is there after a restart.
    server.start(timeout=120)
    with server.api() as api:
        assert api.get(result["answer"].headers["Location"]).content == b"x" * 150_000 + b"y" * 150_000


def _pending_blobs(server: ServerProcess) -> int:
    try:
        return int(sql_rows(server, "SELECT COUNT(*) FROM blobs WHERE state = 'pending'")[0][0])
    except Exception:  # noqa: BLE001 - the table may not exist yet
        return 0


@pytest.fixture(scope="module")
def limited(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("sqlite", max_header_bytes=8192, header_timeout_seconds=1,
                          body_idle_timeout_seconds=1)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a 30 s guard against a hang)."""
    sock.settimeout(30)
    data = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


def test_headers_over_the_limit_get_431(limited: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"GET /fhir/R4/metadata HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"OperationOutcome" in answer and b"MAX_HEADER_BYTES" in answer
    # Headers under the limit pass.
    assert httpx.get(f"{limited.base}/metadata", headers={"X-Big": "a" * 4000}, timeout=30).status_code == 200


def test_headers_sent_too_slowly_get_408(limited: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"GET /fhir/R4/metadata HTTP/1.1\r\n")
        sock.settimeout(0.3)
        answer = b""
        for n in range(200):  # one header line every 0.3 s, never finishing
            try:
                sock.sendall(f"X-Drip-{n}: 1\r\n".encode())
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        answer += _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"HEADER_TIMEOUT_SECONDS" in answer


def test_a_connection_that_sends_nothing_is_closed(limited: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_body_that_stops_arriving_closes_the_connection_and_stores_nothing(limited: ServerProcess) -> None:
    token = limited.auth_headers()["Authorization"]
    before = _pending_blobs(limited), sql_rows(limited, "SELECT COUNT(*) FROM resources WHERE resource_type = 'Binary'")
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(f"POST /fhir/R4/Binary HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".encode()
                     + os.urandom(200_000))
        answer = _read_all(sock)  # then nothing more: the server gives up on the body
    assert not answer.startswith(b"HTTP/1.1 201")
    deadline = time.monotonic() + 30
    while _pending_blobs(limited) != before[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = _pending_blobs(limited), sql_rows(limited, "SELECT COUNT(*) FROM resources WHERE resource_type = 'Binary'")
    assert after == before


@pytest.mark.parametrize("mode", ["filesystem", "database", "s3"])
def test_bytes_no_blob_owns_are_reclaimed_and_others_kept(mode: str, server_factory: Callable[..., ServerProcess],
                                                          request: pytest.FixtureRequest) -> None:
    settings: dict[str, object] = {"storage_mode": mode}
    s3 = None
    if mode == "s3":
        gateway: SeaweedS3 = request.getfixturevalue("seaweedfs")
        settings.update(gateway.settings(unique_bucket("ownerless")))
        s3 = s3_client(settings)  # type: ignore[arg-type]
    server = server_factory("sqlite", **settings)
    with server.api() as api:
        kept = api.post("/Binary", content=os.urandom(200_000), headers=RAW)
        assert kept.status_code == 201
    server.stop()
    # Left behind by a process that died before any blob row owned them, plus a file that is not ours.
    ownerless = "ab" * 16
    foreign = "not-a-fhirvault-key.txt"
    if mode == "filesystem":
        leaf = server.data_dir / "blobs" / "ab" / "ab"
        leaf.mkdir(parents=True, exist_ok=True)
        for name in (ownerless, f".{ownerless}.0123.tmp", foreign):
            (leaf / name).write_bytes(b"left behind")
    elif mode == "database":
        import sqlite3

        with sqlite3.connect(server.data_dir / "fhirvault.db", timeout=30) as conn:
            conn.execute("INSERT INTO blob_chunks (blob_key, seq, data) VALUES (?, 0, ?)", (ownerless, b"x"))
    else:
        assert s3 is not None
        client, bucket = s3
        client.put_object(Bucket=bucket, Key=foreign, Body=b"someone else's")
        client.create_multipart_upload(Bucket=bucket, Key=ownerless)
    # A grace period of 0: everything older than the restart counts as old.
    server.env.update({"FHIRVAULT_PENDING_BLOB_GRACE_SECONDS": "0", "FHIRVAULT_LEFTOVER_SCAN_SECONDS": "1"})
    server.start(timeout=120)
    committed = {row[0] for row in sql_rows(server, "SELECT storage_key FROM blobs WHERE state = 'committed'")}
    expected = committed | ({foreign} if mode != "database" else set())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = stored_items(server, mode, s3)
        if items == {"blobs": expected, "pieces": set()}:
            break
        time.sleep(0.2)
    assert stored_items(server, mode, s3) == {"blobs": expected, "pieces": set()}
    assert len(committed) == 1
    with server.api() as api:
        assert api.get(kept.headers["Location"]).status_code == 200
