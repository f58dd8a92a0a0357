"""The BlobStore interface every storage backend implements."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

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

    # -- resumable staging: a blob written by several appends, possibly from several nodes ----------
    # The caller (service/uploads.py) records after each append how many bytes are staged and the
    # backend's JSON `staging` state; the backend keeps nothing between calls in memory.

    def begin_staging(self, length: int) -> dict[str, Any]:
        """The staging state of a new resumable blob of `length` bytes (nothing is stored yet)."""
        return {}

    async def append(self, key: str, offset: int, chunks: AsyncIterator[bytes], staging: dict[str, Any],
                     *, length: int) -> dict[str, Any]:
        """Stage the chunks as the bytes of blob `key` from `offset` on (what the store held past `offset`
        is dropped first) and return the new staging state. Every byte the iterator yielded before it
        ended is durable when this returns; `length` is the blob's final size, so the backend knows the
        last bytes when it sees them. When the iterator or the backend raises, what was staged at
        `offset` with `staging` stays intact. errors.StorageFailure for backend errors."""
        raise NotImplementedError(f"the {self.name} store cannot stage resumable uploads")

    async def drop_staging(self, key: str, offset: int, staging: dict[str, Any],  # noqa: B027
                           keep: dict[str, Any]) -> None:
        """Remove what is staged past `offset` and what `staging` holds that `keep` does not (a superseded
        tail, or the pieces of an append whose result is not recorded), so that refused bytes are not
        kept. Best effort: what remains, the next append or `delete(key)` removes."""

    async def finish_staging(self, key: str, staging: dict[str, Any], size: int) -> None:
        """Make the staged `size` bytes the immutable blob `key`, readable by `get` (the last append
        brought the staged bytes to `size`)."""
        raise NotImplementedError(f"the {self.name} store cannot stage resumable uploads")

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
    async def exists(self, key: str) -> bool:
        """Whether a whole blob is stored under `key` (pieces of an unfinished write do not count); raises
        errors.StorageFailure when the store does not answer."""

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
