"""Blobs as fixed-size chunks in the `blob_chunks` table, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.blobs.base import OWN_KEY, BlobStore
from fhirvault.errors import StorageFailure
from fhirvault.store.blobs import blob_chunks
from fhirvault.store.database import Database

# Every chunk but the last holds exactly this many bytes, so a byte offset maps to a chunk number.
CHUNK_BYTES = 1024 * 1024


class DatabaseBlobStore(BlobStore):
    """Each chunk is written in its own short transaction, so a large upload never holds the database's
    write lock for long; a failed upload removes the chunks it wrote."""

    name = "database"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """As BlobStore.put: the chunks as fixed-size chunk rows, in transactions of their own; a failure
        removes the rows written."""
        seq = 0
        try:
            async for chunk in _fixed_chunks(chunks):
                async with self.db.write() as conn:
                    await conn.execute(sa.insert(blob_chunks).values(blob_key=key, seq=seq, data=chunk))
                seq += 1
            if seq == 0:
                # An empty blob still exists.
                async with self.db.write() as conn:
                    await conn.execute(sa.insert(blob_chunks).values(blob_key=key, seq=0, data=b""))
        except BaseException as exc:
            if seq:
                await self.delete(key)
            if isinstance(exc, SQLAlchemyError):
                raise StorageFailure(f"Cannot store blob {key} in the database") from exc
            raise

    async def put_in_transaction(self, conn: AsyncConnection, key: str, data: bytes) -> bool:
        """The chunks are rows, written in the caller's transaction: atomic with it."""
        for seq, offset in enumerate(range(0, max(len(data), 1), CHUNK_BYTES)):
            await conn.execute(sa.insert(blob_chunks).values(
                blob_key=key, seq=seq, data=data[offset:offset + CHUNK_BYTES]))
        return True

    async def delete_in_transaction(self, conn: AsyncConnection, key: str) -> bool:
        """Deletes the chunk rows of `key` inside the caller's transaction `conn`, so the bytes go exactly
        when it commits; True (this store can)."""
        await conn.execute(sa.delete(blob_chunks).where(blob_chunks.c.blob_key == key))
        return True

    async def append(self, key: str, offset: int, chunks: AsyncIterator[bytes], staging: dict[str, Any],
                     *, length: int) -> dict[str, Any]:
        """Appends chunk rows (each in its own short transaction); a partial last chunk is rewritten whole,
        so every chunk but the last keeps exactly CHUNK_BYTES and offsets still map to chunk numbers."""
        seq, keep = divmod(offset, CHUNK_BYTES)
        try:
            async with self.db.write() as conn:
                # Rows past the recorded offset belong to an append whose result was never recorded.
                await conn.execute(sa.delete(blob_chunks).where(
                    blob_chunks.c.blob_key == key, blob_chunks.c.seq >= (seq + 1 if keep else seq)))
                row = (await conn.execute(sa.select(blob_chunks.c.data).where(
                    blob_chunks.c.blob_key == key, blob_chunks.c.seq == seq))).first() if keep else None
            head = bytes(row.data)[:keep] if row is not None else b""
            if len(head) != keep:
                raise StorageFailure(f"The staged bytes of blob {key} end before offset {offset}")

            async def from_head() -> AsyncIterator[bytes]:
                if head:
                    yield head
                async for chunk in chunks:
                    yield chunk

            async for chunk in _fixed_chunks(from_head()):
                async with self.db.write() as conn:
                    await conn.execute(sa.delete(blob_chunks).where(blob_chunks.c.blob_key == key,
                                                                    blob_chunks.c.seq == seq))
                    await conn.execute(sa.insert(blob_chunks).values(blob_key=key, seq=seq, data=chunk))
                seq += 1
        except SQLAlchemyError as exc:
            raise StorageFailure(f"Cannot stage blob {key} in the database") from exc
        return staging

    async def drop_staging(self, key: str, offset: int, staging: dict[str, Any], keep: dict[str, Any]) -> None:
        """As BlobStore.drop_staging: deletes the chunk rows staged past `offset`."""
        seq, keep_bytes = divmod(offset, CHUNK_BYTES)
        async with self.db.write() as conn:
            await conn.execute(sa.delete(blob_chunks).where(
                blob_chunks.c.blob_key == key, blob_chunks.c.seq >= (seq + 1 if keep_bytes else seq)))
            if keep_bytes:
                row = (await conn.execute(sa.select(blob_chunks.c.data).where(
                    blob_chunks.c.blob_key == key, blob_chunks.c.seq == seq))).first()
                if row is not None and len(row.data) > keep_bytes:
                    await conn.execute(sa.update(blob_chunks).where(
                        blob_chunks.c.blob_key == key, blob_chunks.c.seq == seq,
                    ).values(data=bytes(row.data)[:keep_bytes]))

    async def finish_staging(self, key: str, staging: dict[str, Any], size: int) -> None:
        """The chunk rows are the blob already; an empty blob gets its one empty row."""
        if size == 0 and not await self.exists(key):
            async with self.db.write() as conn:
                await conn.execute(sa.insert(blob_chunks).values(blob_key=key, seq=0, data=b""))

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """As BlobStore.get: reads only the chunk rows that overlap [start, end), a few at a time."""
        if end is not None and end <= start and not await self.exists(key):
            # An empty range reads no chunk, yet a missing blob must still be reported.
            raise StorageFailure(f"The bytes of blob {key} are missing from the database")
        seq = start // CHUNK_BYTES
        skip = start - seq * CHUNK_BYTES
        position = start
        first = True
        while end is None or position < end:
            async with self.db.read() as conn:
                row = (await conn.execute(sa.select(blob_chunks.c.data).where(
                    blob_chunks.c.blob_key == key, blob_chunks.c.seq == seq))).first()
            if row is None:
                if first and not await self.exists(key):
                    raise StorageFailure(f"The bytes of blob {key} are missing from the database")
                break
            data = bytes(row.data)[skip:]
            if end is not None:
                data = data[:end - position]
            if data:
                yield data
            position += len(data)
            seq += 1
            skip = 0
            first = False

    async def delete(self, key: str) -> None:
        """As BlobStore.delete: removes every chunk row of `key`."""
        async with self.db.write() as conn:
            await conn.execute(sa.delete(blob_chunks).where(blob_chunks.c.blob_key == key))

    async def stored_keys(self, changed_before: float) -> AsyncIterator[str]:
        """Every key with chunk rows (they keep no times; a row owning them is committed first, or in
        the same transaction, so an ownerless key is a leftover whatever its age)."""
        after = ""
        while True:
            async with self.db.read() as conn:
                keys = list((await conn.execute(
                    sa.select(blob_chunks.c.blob_key).where(blob_chunks.c.blob_key > after)
                    .group_by(blob_chunks.c.blob_key).order_by(blob_chunks.c.blob_key).limit(500))).scalars())
            for key in keys:
                if OWN_KEY.fullmatch(key):
                    yield key
            if len(keys) < 500:
                return
            after = keys[-1]

    async def exists(self, key: str) -> bool:
        """As BlobStore.exists: whether `key` has chunk rows."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(blob_chunks.c.seq).where(
                blob_chunks.c.blob_key == key).limit(1))).first()
        return row is not None


async def _fixed_chunks(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
    if buffer:
        yield bytes(buffer)
