"""The blob registry (which blobs exist, their state, size and hashes) and the chunk table of the database store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.schema import metadata
from fhirvault.store.uploads import uploads

PENDING = "pending"
COMMITTED = "committed"
RELEASED = "released"

# One row per blob: the owner of every byte stored under `storage_key`. A blob is `pending` from before
# its first byte is stored (the row is committed first, so a crash mid-upload leaves bytes the sweeper
# can find) until the transaction that writes the resource version referring to it marks it
# `committed`. `released` means no version needs the bytes any more (a failed upload, a pending blob
# past the grace period, an expunged version): its bytes are being removed, and the row goes last.
# A blob moves pending -> committed or pending -> released, each by one conditional UPDATE, so an
# upload that commits and a sweeper that reclaims can never both win; committed bytes are only ever
# released by expunge.
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
    # The sweeper asks, for keys it finds in the store, whether any blob owns them.
    sa.Index("ix_blobs_storage_key", "storage_key"),
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
        """pending -> committed; LookupError when the blob is no longer pending (the sweeper released it:
        the upload took longer than the grace period)."""
        result = await conn.execute(sa.update(blobs).where(blobs.c.id == blob_id, blobs.c.state == PENDING).values(
            state=COMMITTED, size=size, sha256=sha256, sha1=sha1))
        if result.rowcount != 1:
            raise LookupError(f"blob {blob_id} is no longer pending")

    async def release_pending(self, conn: AsyncConnection, blob_id: str, created_before: int | None = None) -> bool:
        """pending -> released, only when still pending (and created before `created_before`, microseconds);
        False when it was committed (or is gone) meanwhile, and its bytes must then stay."""
        where = [blobs.c.id == blob_id, blobs.c.state == PENDING]
        if created_before is not None:
            where.append(blobs.c.created < created_before)
        result = await conn.execute(sa.update(blobs).where(*where).values(state=RELEASED))
        return bool(result.rowcount == 1)

    async def release(self, conn: AsyncConnection, blob_id: str) -> None:
        """Any state -> released: for expunge, in the transaction that removes the last version using it."""
        await conn.execute(sa.update(blobs).where(blobs.c.id == blob_id).values(state=RELEASED))

    async def get(self, conn: AsyncConnection, blob_id: str) -> BlobRecord | None:
        row = (await conn.execute(sa.select(blobs).where(blobs.c.id == blob_id))).first()
        return _record(row) if row else None

    async def remove(self, conn: AsyncConnection, blob_id: str) -> None:
        """Drop the row of a released blob whose bytes are gone (a committed row is never dropped)."""
        await conn.execute(sa.delete(blobs).where(blobs.c.id == blob_id, blobs.c.state != COMMITTED))

    async def sweepable(self, conn: AsyncConnection, created_before: int, limit: int = 100,
                        excluding: frozenset[str] = frozenset()) -> list[BlobRecord]:
        """Released blobs, and pending ones created before `created_before` (microseconds), oldest first.
        A pending blob a resumable upload owns is left out: it lives as long as the upload (the upload
        sweeper releases it when the upload expires)."""
        owned_by_upload = sa.exists().where(uploads.c.blob_id == blobs.c.id)
        where = [sa.or_(blobs.c.state == RELEASED,
                        sa.and_(blobs.c.state == PENDING, blobs.c.created < created_before,
                                sa.not_(owned_by_upload)))]
        if excluding:
            where.append(blobs.c.id.not_in(sorted(excluding)))
        stmt = sa.select(blobs).where(*where).order_by(blobs.c.created).limit(limit)
        return [_record(r) for r in (await conn.execute(stmt)).all()]

    async def owned_keys(self, conn: AsyncConnection, storage_keys: list[str]) -> set[str]:
        """Those of `storage_keys` some blob row (in any state) owns."""
        if not storage_keys:
            return set()
        rows = await conn.execute(sa.select(blobs.c.storage_key).where(blobs.c.storage_key.in_(storage_keys)))
        return set(rows.scalars())
