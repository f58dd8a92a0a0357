"""The BlobStore contract, run against every storage backend directly (no fhirvault server)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from fhirvault.blobs.base import BlobStore
from fhirvault.blobs.s3 import PART_SIZE, S3BlobStore
from fhirvault.errors import StorageFailure
from tests.support.binary import bucket_keys, s3_client
from tests.support.s3 import IN_CI, SeaweedS3, unique_bucket
from tests.support.server import postgres_available, postgres_database

MiB = 1024 * 1024


@dataclass
class BlobBackend:
    """How a contract test opens one backend, and how it looks for what a failed write left behind."""

    name: str
    open: Callable[[], AbstractAsyncContextManager[BlobStore]]
    leftovers: Callable[[BlobStore, str], Awaitable[list[str]]]  # what a failed put of the key left behind


def s3_backend(seaweedfs: SeaweedS3) -> BlobBackend:
    bucket = unique_bucket("fv-contract")

    @asynccontextmanager
    async def open_store() -> AsyncIterator[BlobStore]:
        store = S3BlobStore(seaweedfs.endpoint, bucket, seaweedfs.region, seaweedfs.access_key, seaweedfs.secret_key)
        try:
            yield store
        finally:
            await store.close()

    async def leftovers(store: BlobStore, key: str) -> list[str]:
        # Any incomplete multipart upload in the bucket is a leak, whichever key it was for.
        client = s3_client(seaweedfs.endpoint, seaweedfs.region, seaweedfs.access_key, seaweedfs.secret_key)
        try:
            return sorted(k for k in bucket_keys(client, bucket) if k.endswith(" (unfinished upload)"))
        finally:
            client.close()

    return BlobBackend("s3", open_store, leftovers)


def filesystem_backend(root: Path) -> BlobBackend:
    from fhirvault.blobs.filesystem import FilesystemBlobStore

    @asynccontextmanager
    async def open_store() -> AsyncIterator[BlobStore]:
        yield FilesystemBlobStore(root)

    async def leftovers(store: BlobStore, key: str) -> list[str]:
        # The final file and any temporary file on the way to it carry the key in their names.
        return sorted(str(path.relative_to(root)) for path in root.rglob(f"*{key}*"))

    return BlobBackend("filesystem", open_store, leftovers)


def database_backend(url: str) -> BlobBackend:
    from fhirvault.blobs.database import DatabaseBlobStore
    from fhirvault.store.blobs import blob_chunks
    from fhirvault.store.database import Database

    @asynccontextmanager
    async def open_store() -> AsyncIterator[BlobStore]:
        db = Database(url)
        await db.migrate()
        try:
            yield DatabaseBlobStore(db)
        finally:
            await db.close()

    async def leftovers(store: BlobStore, key: str) -> list[str]:
        assert isinstance(store, DatabaseBlobStore)
        async with store.db.read() as conn:
            rows = await conn.execute(sa.select(blob_chunks.c.seq).where(blob_chunks.c.blob_key == key))
            return [f"{key} chunk {seq}" for seq in rows.scalars()]

    return BlobBackend("database", open_store, leftovers)


BACKENDS = ["s3", "filesystem", "database-sqlite", "database-postgres"]


@pytest.fixture(scope="module", params=BACKENDS)
def blob_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobBackend]:
    """Every storage backend in turn, each opened fresh inside each test's own event loop."""
    if request.param == "s3":
        yield s3_backend(request.getfixturevalue("seaweedfs"))
    elif request.param == "filesystem":
        yield filesystem_backend(tmp_path_factory.mktemp("blobs"))
    elif request.param == "database-sqlite":
        yield database_backend(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('blobdb') / 'blobs.db'}")
    elif request.param == "database-postgres":
        if not postgres_available():
            if IN_CI:
                pytest.fail("PostgreSQL at 127.0.0.1:5432 is not reachable, and CI=true requires it")
            pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
        with postgres_database() as url:
            yield database_backend(url)
    else:
        raise AssertionError(f"no contract set-up for backend {request.param}")


def run(backend: BlobBackend, scenario: Callable[[BlobStore], Awaitable[None]]) -> None:
    """Runs one scenario on a freshly opened store inside its own event loop."""

    async def main() -> None:
        async with backend.open() as store:
            await scenario(store)

    asyncio.run(main())


def new_key() -> str:
    return f"contract{os.urandom(12).hex()}"


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def read_all(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([piece async for piece in store.get(key, start, end)])


def random_stream(total: int, seed: bytes, chunk: int = 1_000_003) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in odd-sized chunks, so part boundaries never line up with chunks."""
    counter = 0
    sent = 0
    block = b""
    while sent < total:
        while len(block) < chunk:
            block += hashlib.sha512(seed + counter.to_bytes(8, "big")).digest() * 64
            counter += 1
        piece, block = block[:min(chunk, total - sent)], block[chunk:]
        sent += len(piece)
        yield piece


@pytest.mark.parametrize("size", [0, 1, 100_000, PART_SIZE, PART_SIZE + 1, 2 * PART_SIZE + 12345])
def test_round_trip_keeps_every_byte(blob_backend: BlobBackend, size: int) -> None:
    data = os.urandom(size)

    async def scenario(store: BlobStore) -> None:
        key = new_key()
        assert not await store.exists(key)
        await store.put(key, chunks_of(data))
        assert await store.exists(key)
        assert await read_all(store, key) == data

    run(blob_backend, scenario)


def test_large_blob_streams_in_and_out_unchanged(blob_backend: BlobBackend) -> None:
    total = 50 * MiB
    expected = hashlib.sha256()
    for piece in random_stream(total, b"fifty"):
        expected.update(piece)

    async def source() -> AsyncIterator[bytes]:
        for piece in random_stream(total, b"fifty"):
            yield piece

    async def scenario(store: BlobStore) -> None:
        key = new_key()
        await store.put(key, source())
        got = hashlib.sha256()
        size = pieces = largest = 0
        async for piece in store.get(key):
            got.update(piece)
            size += len(piece)
            pieces += 1
            largest = max(largest, len(piece))
        assert size == total
        assert got.hexdigest() == expected.hexdigest()
        # Streamed, not read whole: many pieces, none of them big.
        assert pieces > 1
        assert largest <= 16 * MiB
        await store.delete(key)

    run(blob_backend, scenario)


def test_ranged_gets_return_exactly_the_asked_bytes(blob_backend: BlobBackend) -> None:
    data = os.urandom(PART_SIZE + 300_000)  # spans a multipart part boundary on S3

    async def scenario(store: BlobStore) -> None:
        key = new_key()
        await store.put(key, chunks_of(data))
        n = len(data)
        assert await read_all(store, key, 1000) == data[1000:]
        assert await read_all(store, key, 10, 20) == data[10:20]
        assert await read_all(store, key, PART_SIZE - 5, PART_SIZE + 5) == data[PART_SIZE - 5:PART_SIZE + 5]
        assert await read_all(store, key, n - 1) == data[-1:]
        assert await read_all(store, key, n - 1, n) == data[-1:]
        assert await read_all(store, key, 0, 1) == data[:1]
        assert await read_all(store, key, 7, 7) == b""
        assert await read_all(store, key, 0, n) == data

    run(blob_backend, scenario)


class ChunkSourceBroke(Exception):
    pass


@pytest.mark.parametrize("fail_after", [3 * 64 * 1024, 2 * PART_SIZE + 64 * 1024], ids=["small", "multipart"])
def test_failing_chunk_source_leaves_nothing_behind(blob_backend: BlobBackend, fail_after: int) -> None:
    async def broken() -> AsyncIterator[bytes]:
        sent = 0
        while sent < fail_after:
            yield b"x" * (64 * 1024)
            sent += 64 * 1024
        raise ChunkSourceBroke("client went away")

    async def scenario(store: BlobStore) -> None:
        key = new_key()
        with pytest.raises(ChunkSourceBroke):
            await store.put(key, broken())
        assert not await store.exists(key)
        assert await blob_backend.leftovers(store, key) == []

    run(blob_backend, scenario)


def test_cancelled_upload_leaves_nothing_behind(blob_backend: BlobBackend) -> None:
    """A request task cancelled mid-body (client disconnect) must not leave parts behind either."""
    reached = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for _ in range(3 * PART_SIZE // (64 * 1024)):
            yield b"y" * (64 * 1024)
        reached.set()
        await asyncio.Event().wait()  # never comes: the task is cancelled here
        yield b""

    async def scenario(store: BlobStore) -> None:
        key = new_key()
        task = asyncio.create_task(store.put(key, stalls()))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await store.exists(key)
        assert await blob_backend.leftovers(store, key) == []

    run(blob_backend, scenario)


def test_delete_removes_and_is_idempotent(blob_backend: BlobBackend) -> None:
    async def scenario(store: BlobStore) -> None:
        key, other = new_key(), new_key()
        await store.put(key, chunks_of(b"short-lived"))
        await store.put(other, chunks_of(b"stays"))
        await store.delete(key)
        assert not await store.exists(key)
        await store.delete(key)
        await store.delete(new_key())
        with pytest.raises(StorageFailure):
            await read_all(store, key)
        assert await read_all(store, other) == b"stays"

    run(blob_backend, scenario)


def test_get_of_missing_blob_raises_storage_failure_naming_the_key(blob_backend: BlobBackend) -> None:
    async def scenario(store: BlobStore) -> None:
        key = new_key()
        for start, end in [(0, None), (5, None), (0, 10), (3, 3)]:
            with pytest.raises(StorageFailure) as caught:
                await read_all(store, key, start, end)
            assert key in caught.value.message

    run(blob_backend, scenario)


def test_presigned_url_serves_the_bytes_with_the_given_type(blob_backend: BlobBackend) -> None:
    data = os.urandom(70_000)
    seen: dict[str, Any] = {}

    async def scenario(store: BlobStore) -> None:
        key = new_key()
        await store.put(key, chunks_of(data))
        seen["url"] = await store.presigned_get_url(
            key, expires_in=300, content_type="image/png",
            content_disposition="attachment; filename=\"scan.png\"")

    run(blob_backend, scenario)
    if blob_backend.name != "s3":
        # Only an object store serves blobs itself; the others must say so, so callers stream instead.
        assert seen["url"] is None
        return
    answer = httpx.get(seen["url"], timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["content-disposition"] == "attachment; filename=\"scan.png\""
    assert answer.content == data
    tampered = httpx.get(seen["url"].replace("response-content-type=image%2Fpng", "response-content-type=text%2Fhtml"),
                         timeout=30)
    assert tampered.status_code == 403


def test_s3_errors_never_carry_credentials(seaweedfs: SeaweedS3) -> None:
    secret = "wrong-" + os.urandom(12).hex()
    store = S3BlobStore(seaweedfs.endpoint, unique_bucket("fv-denied"), seaweedfs.region,
                        seaweedfs.access_key, secret)

    async def scenario() -> None:
        try:
            with pytest.raises(StorageFailure) as caught:
                await store.put(new_key(), chunks_of(b"denied"))
            text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
            assert secret not in text
            assert seaweedfs.access_key not in text
            assert seaweedfs.secret_key not in text
        finally:
            await store.close()

    asyncio.run(scenario())


def test_s3_store_creates_its_bucket_once(seaweedfs: SeaweedS3) -> None:
    bucket = unique_bucket("fv-fresh")

    async def scenario() -> None:
        first = S3BlobStore(seaweedfs.endpoint, bucket, seaweedfs.region, seaweedfs.access_key, seaweedfs.secret_key)
        second = S3BlobStore(seaweedfs.endpoint, bucket, seaweedfs.region, seaweedfs.access_key, seaweedfs.secret_key)
        try:
            assert not await first.exists("k")  # the first operation creates the bucket
            await second.put("k", chunks_of(b"v"))  # a second node finds the bucket already there
            assert await first.exists("k")
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
