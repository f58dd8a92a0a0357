"""The BlobStore interface every storage backend implements."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

# The shape of the keys fhirvault gives blobs (uuid4().hex). Listing a store for leftovers only ever
# considers names of this shape, so nothing else that shares a directory or bucket is touched.
OWN_KEY = re.compile(r"[0-9a-f]{32}")


class BlobStore(ABC):
    """Where the bytes of blobs live, addressed by a key that is unique across all nodes.

    Blobs are immutable: written once by `put`, read many times, removed by `delete`. Hashing, size
    limits and the blob registry (pending/committed state) are the caller's business; a backend only
    moves bytes, in chunks, never holding a whole blob in memory.
    """

    name: str = "abstract"

    @abstractmethod
    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """Store every chunk under `key`. When the iterator or the backend raises, nothing is left
        behind under `key` and the exception propagates (backend errors as errors.StorageFailure)."""

    async def put_in_transaction(self, conn: AsyncConnection, key: str, data: bytes) -> bool:
        """Store bytes already in memory inside the caller's open database transaction `conn`, so that
        they exist exactly when it commits. True when done; False when this backend keeps its bytes
        outside the database and cannot (the caller then uses `put`, and removes them on rollback)."""
        return False

    async def delete_in_transaction(self, conn: AsyncConnection, key: str) -> bool:
        """Remove, inside the caller's open transaction `conn`, bytes `put_in_transaction` stored there.
        True when done; False when this backend keeps its bytes outside the database."""
        return False

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of the blob (end None: to the end), in chunks.
        A missing blob raises errors.StorageFailure naming the key."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob and every piece an unfinished write under `key` left (temporary files,
        incomplete multipart uploads, chunk rows); a missing blob is not an error."""

    def stored_keys(self, changed_before: float) -> AsyncIterator[str]:
        """Keys (of fhirvault's own shape, OWN_KEY) under which this store holds anything, whole blobs
        or pieces of unfinished writes, last changed before `changed_before` (seconds since the epoch;
        a store that keeps no times lists every key). The sweeper removes those no blob row owns.
        A key may be listed more than once."""
        return _nothing()

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    async def probe(self) -> None:
        """One cheap round trip that proves the store answers; raises errors.StorageFailure when not.
        By default: ask whether a key that is never used exists."""
        await self.exists("0" * 32)

    async def presigned_get_url(self, key: str, *, expires_in: int, content_type: str,
                                content_disposition: str | None) -> str | None:
        """A URL the object store itself serves the blob at, when the backend has one (S3)."""
        return None

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections."""


@dataclass(frozen=True)
class StoredObject:
    """What the store says of a stored object: its size in bytes and, when the store verified one on
    upload, the base64 SHA-256 checksum it keeps (S3 `x-amz-checksum-sha256`)."""

    size: int
    sha256_b64: str | None


class PresignedUploads(ABC):
    """A store clients can upload to directly, with URLs the store itself checks (S3 presigned URLs):
    the bytes never pass through fhirvault. Every URL is bound to one key, one size and an expiry."""

    @abstractmethod
    async def presigned_put_url(self, key: str, *, expires_in: int, content_type: str, size: int,
                                sha256_b64: str | None) -> str:
        """A URL for one `PUT` of exactly `size` bytes with `Content-Type: content_type` (and, when
        `sha256_b64` is given, `x-amz-checksum-sha256: sha256_b64`, which the store checks against
        the bytes); valid for `expires_in` seconds."""

    @abstractmethod
    async def begin_parts(self, key: str, content_type: str) -> str:
        """Begin a multipart upload under `key`; returns the store's upload id."""

    @abstractmethod
    async def presigned_part_url(self, key: str, upload_id: str, number: int, *, size: int,
                                 expires_in: int) -> str:
        """A URL for one `PUT` of part `number` (1-based) of exactly `size` bytes."""

    @abstractmethod
    async def uploaded_parts(self, key: str, upload_id: str) -> dict[int, int] | None:
        """Part number -> size of the parts uploaded so far; None when the multipart upload is gone."""

    @abstractmethod
    async def join_parts(self, key: str, upload_id: str, numbers: list[int]) -> None:
        """Complete the multipart upload from the parts `numbers` (in that order) into one object."""

    @abstractmethod
    async def stat(self, key: str) -> StoredObject | None:
        """Size (and stored checksum) of the object under `key`; None when there is none."""


async def _nothing() -> AsyncIterator[str]:
    return
    yield ""
