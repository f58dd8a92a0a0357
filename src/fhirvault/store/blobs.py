"""The blob registry (which blobs exist, their state, size and hashes) and the chunk table of the database store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.schema import metadata

PENDING = "pending"
COMMITTED = "committed"

# One row per blob. A blob is `pending` from before its first byte is stored until the transaction that
# writes the resource version referring to it marks it `committed`; pending rows older than a grace
# period are leftovers of failed uploads and are swept with their bytes.
blobs = sa.Table(
    "blobs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("backend", sa.String(16), nullable=False),
    sa.Column("storage_key", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("sha1", sa.String(28), nullable=True),  # base64, as in Attachment.hash
    sa.Column("created", sa.BigInteger, nullable=False),  # microseconds since the epoch
    sa.Index("ix_blobs_state_created", "state", "created"),
)

# The bytes of blobs in `database` mode: fixed-size chunks, so no value is ever huge and a range read
# touches only the chunks it needs.
blob_chunks = sa.Table(
    "blob_chunks", metadata,
    sa.Column("blob_key", sa.String(255), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class BlobRecord:
    id: str
    state: str
    backend: str
    storage_key: str
    size: int | None
    sha256: str | None
    sha1: str | None
    created: int


def _record(row: Any) -> BlobRecord:
    return BlobRecord(row.id, row.state, row.backend, row.storage_key, row.size, row.sha256, row.sha1, row.created)


class BlobRegistry:
    """SQL access to the registry; every method runs inside a transaction the caller owns."""

    async def add_pending(self, conn: AsyncConnection, blob_id: str, backend: str, storage_key: str,
                          created: int) -> None:
        await conn.execute(sa.insert(blobs).values(
            id=blob_id, state=PENDING, backend=backend, storage_key=storage_key, created=created))

    async def commit(self, conn: AsyncConnection, blob_id: str, size: int, sha256: str, sha1: str) -> None:
        result = await conn.execute(sa.update(blobs).where(blobs.c.id == blob_id).values(
            state=COMMITTED, size=size, sha256=sha256, sha1=sha1))
        if result.rowcount != 1:
            # The sweeper removed it: the upload took longer than the grace period.
            raise LookupError(f"blob {blob_id} is no longer registered")

    async def get(self, conn: AsyncConnection, blob_id: str) -> BlobRecord | None:
        row = (await conn.execute(sa.select(blobs).where(blobs.c.id == blob_id))).first()
        return _record(row) if row else None

    async def remove(self, conn: AsyncConnection, blob_id: str) -> None:
        await conn.execute(sa.delete(blobs).where(blobs.c.id == blob_id))

    async def pending_before(self, conn: AsyncConnection, created_before: int, limit: int = 100,
                             excluding: frozenset[str] = frozenset()) -> list[BlobRecord]:
        where = [blobs.c.state == PENDING, blobs.c.created < created_before]
        if excluding:
            where.append(blobs.c.id.not_in(sorted(excluding)))
        stmt = sa.select(blobs).where(*where).order_by(blobs.c.created).limit(limit)
        return [_record(r) for r in (await conn.execute(stmt)).all()]
