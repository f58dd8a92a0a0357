"""The BlobStore interface every storage backend implements."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

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


async def _nothing() -> AsyncIterator[str]:
    return
    yield ""
