"""The BlobStore interface every storage backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection


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

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of the blob (end None: to the end), in chunks.
        A missing blob raises errors.StorageFailure naming the key."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    async def presigned_get_url(self, key: str, *, expires_in: int, content_type: str,
                                content_disposition: str | None) -> str | None:
        """A URL the object store itself serves the blob at, when the backend has one (S3)."""
        return None

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections."""
