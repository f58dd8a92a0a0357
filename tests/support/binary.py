"""Binary test support: the storage modes every Binary test runs in, servers per mode, and looks into a
server's database, storage directory and S3 bucket (to prove nothing was left behind)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3 import unique_bucket
from tests.support.server import FhirApi, ServerProcess, status_bytes

# The one list of storage modes the Binary tests are parametrized over; "s3" runs against the session's
# SeaweedFS gateway (tests/support/s3.py), which CI must provide.
STORAGE_MODES = ["inline", "database", "filesystem", "s3"]
DATABASES = ["sqlite", "postgres"]

_servers: dict[tuple[str, str], ServerProcess] = {}


@pytest.fixture(scope="session", params=STORAGE_MODES)
def storage_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session", params=DATABASES)
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def mode_settings(request: pytest.FixtureRequest, storage_mode: str) -> dict[str, Any]:
    """Settings that put a server into `storage_mode`. In s3 mode each server gets a bucket of its own on the
    session's gateway, so that listing the bucket shows exactly what that server left there."""
    if storage_mode != "s3":
        return {"storage_mode": storage_mode}
    s3_settings: dict[str, Any] = request.getfixturevalue("s3_settings")  # skips, or fails with CI=true
    return {**s3_settings, "s3_bucket": unique_bucket("fv-binary")}


def shared_binary_server(server_factory: Callable[..., ServerProcess], storage_mode: str,
                         database: str, request: pytest.FixtureRequest) -> ServerProcess:
    """The server for (storage mode, database) with default settings, started once per session."""
    key = (storage_mode, database)
    if key not in _servers:
        _servers[key] = server_factory(database, keep=True, **mode_settings(request, storage_mode))
    return _servers[key]


@pytest.fixture(scope="session")
def binary_server(storage_mode: str, database: str, server_factory: Callable[..., ServerProcess],
                  request: pytest.FixtureRequest) -> ServerProcess:
    """One server per (storage mode, database), shared by every Binary test file."""
    return shared_binary_server(server_factory, storage_mode, database, request)


@pytest.fixture
def bapi(binary_server: ServerProcess) -> Iterator[FhirApi]:
    with binary_server.api() as client:
        yield client


# -- looking into a server ------------------------------------------------------------------------
def _sql(server: ServerProcess, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    url = server.env.get("FHIRVAULT_DATABASE_URL")
    if url and url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            return list(conn.execute(query.replace("?", "%s"), params).fetchall())
    with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
        return list(conn.execute(query, params).fetchall())


def blob_rows(server: ServerProcess) -> list[tuple[str, str, str]]:
    """(id, state, storage_key) of every registered blob."""
    return [(r[0], r[1], r[2]) for r in _sql(server, "SELECT id, state, storage_key FROM blobs ORDER BY id")]


def blob_ids_of(server: ServerProcess, binary_id: str) -> list[str | None]:
    """The blob id of each version of Binary/binary_id, oldest first."""
    rows = _sql(server, "SELECT blob_id FROM resource_versions WHERE resource_type = 'Binary' AND id = ? "
                        "ORDER BY version_id", (binary_id,))
    return [r[0] for r in rows]


def binary_count(server: ServerProcess) -> int:
    return int(_sql(server, "SELECT count(*) FROM resource_versions WHERE resource_type = 'Binary'")[0][0])


def chunk_keys(server: ServerProcess) -> set[str]:
    return {r[0] for r in _sql(server, "SELECT DISTINCT blob_key FROM blob_chunks")}


def storage_files(server: ServerProcess) -> list[Path]:
    """Every file under the server's storage directory, temporary files included."""
    root = Path(server.env.get("FHIRVAULT_STORAGE_DIR") or server.data_dir / "blobs")
    if not root.is_dir():
        return []
    return sorted(Path(d) / f for d, _, files in os.walk(root) for f in files)


def s3_client(endpoint: str, region: str, access_key: str, secret_key: str) -> Any:
    """A plain synchronous S3 client (close it after use)."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


def server_s3_client(server: ServerProcess) -> Any:
    """An S3 client with the credentials of an s3-mode server."""
    env = server.env
    return s3_client(env["FHIRVAULT_S3_ENDPOINT"], env["FHIRVAULT_S3_REGION"], env["FHIRVAULT_S3_ACCESS_KEY"],
                     env["FHIRVAULT_S3_SECRET_KEY"])


def bucket_keys(client: Any, bucket: str) -> set[str]:
    """Every object in an S3 bucket, and every multipart upload begun there and never completed nor
    aborted (its parts hold bytes too), marked as such; empty when the bucket does not exist."""
    from botocore.exceptions import ClientError

    keys: set[str] = set()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys.update(obj["Key"] for obj in page.get("Contents", []))
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            keys.update(f"{upload['Key']} (unfinished upload)" for upload in page.get("Uploads", []))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
    return keys


def s3_keys(server: ServerProcess) -> set[str]:
    """What the server has in its bucket (see bucket_keys); empty when it does not store in S3."""
    if server.env.get("FHIRVAULT_STORAGE_MODE") != "s3":
        return set()
    client = server_s3_client(server)
    try:
        return bucket_keys(client, server.env["FHIRVAULT_S3_BUCKET"])
    finally:
        client.close()


def stored_keys(server: ServerProcess) -> set[str]:
    """Keys that have bytes in the server's blob storage (files, chunks or S3 objects), whatever the mode."""
    return {p.name for p in storage_files(server)} | chunk_keys(server) | s3_keys(server)


def peak_rss_bytes(server: ServerProcess) -> int:
    """The sum of the server processes' high-water marks of resident memory (VmHWM): never below the
    peak of their resident memory together."""
    return status_bytes(server.pids(), "VmHWM")


def reset_peak_rss(server: ServerProcess) -> int:
    """Restart the high-water mark from the current resident memory (Linux clear_refs), which is returned,
    so a later peak_rss_bytes measures one transfer, not everything the shared server did before."""
    pids = server.pids()
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    return status_bytes(pids, "VmRSS")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll until the server has done something asynchronous (not a timing assertion: only a deadline)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.05)


def signed_url_of(response: Any) -> str:
    """The signed storage URL that a Binary create or update answer carries in its
    `Link: <url>; rel="alternate"` header (R4's Binary has no element for it)."""
    m = re.match(r'<([^>]+)>;\s*rel="alternate"', response.headers.get("Link", ""))
    assert m, f"no signed URL in the Link header: {response.headers.get('Link')!r}"
    return m.group(1)


# -- content ----------------------------------------------------------------------------------------
def pseudo_random(size: int, seed: int = 1) -> bytes:
    """Reproducible incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def generated_chunks(total: int, chunk: int = 1024 * 1024, seed: int = 7) -> Iterator[bytes]:
    """`total` bytes in chunks, never all in memory: a block pattern varied by a counter."""
    block = pseudo_random(chunk, seed)
    sent = 0
    n = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        prefix = n.to_bytes(8, "big")
        piece = prefix[: len(piece)] + piece[len(prefix):]
        yield piece
        sent += len(piece)
        n += 1


def sha1_b64(data: bytes) -> str:
    """Attachment.hash of `data`: base64 of its SHA-1 (R4 datatypes.html#Attachment)."""
    return base64.b64encode(hashlib.sha1(data).digest()).decode()
