"""The table of direct uploads: a client's upload straight to the object store, from `$upload-url` to
`$upload-complete` (the use case lives in `fhirvault.service.direct_uploads`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.blobs import blobs
from fhirvault.store.schema import metadata

# One row per direct upload handed out. Its bytes belong to a pending blob of the registry (`blob_id`),
# registered in the same transaction as the row, so the sweeper can always find them; the row goes with
# the blob row (ON DELETE CASCADE) when the sweeper or a failed completion removes the blob.
direct_uploads = sa.Table(
    "direct_uploads", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("blob_id", sa.String(64), sa.ForeignKey(blobs.c.id, ondelete="CASCADE"), nullable=False),
    sa.Column("client_id", sa.String(128), nullable=False),  # only this client may complete it
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=True),  # hex; declared by the client, checked at completion
    sa.Column("security_context", sa.String(160), nullable=True),
    sa.Column("filename", sa.Text, nullable=True),
    sa.Column("multipart_id", sa.String(1024), nullable=True),  # the object store's multipart upload id
    sa.Column("part_size", sa.BigInteger, nullable=True),
    sa.Column("created", sa.BigInteger, nullable=False),  # microseconds since the epoch
    sa.Column("expires", sa.BigInteger, nullable=False),  # the presigned URLs' expiry, microseconds
    sa.Column("completing", sa.BigInteger, nullable=True),  # when a completion claimed it, microseconds
    sa.Column("binary_id", sa.String(64), nullable=True),  # the Binary it became
    sa.Index("ix_direct_uploads_expires", "expires"),
)


@dataclass(frozen=True)
class DirectUploadRow:
    """One row of `direct_uploads`; times in microseconds since the epoch."""

    id: str
    blob_id: str
    client_id: str
    content_type: str
    size: int
    sha256: str | None
    security_context: str | None
    filename: str | None
    multipart_id: str | None
    part_size: int | None
    created: int
    expires: int
    completing: int | None
    binary_id: str | None


def _row(r: Any) -> DirectUploadRow:
    return DirectUploadRow(r.id, r.blob_id, r.client_id, r.content_type, r.size, r.sha256, r.security_context,
                           r.filename, r.multipart_id, r.part_size, r.created, r.expires, r.completing,
                           r.binary_id)


class DirectUploadRows:
    """SQL access to `direct_uploads`; every method runs inside a transaction the caller owns."""

    async def add(self, conn: AsyncConnection, row: DirectUploadRow) -> None:
        """Insert a new upload (its pending blob row must exist: the foreign key)."""
        await conn.execute(sa.insert(direct_uploads).values(**row.__dict__))

    async def get(self, conn: AsyncConnection, upload_id: str, client_id: str) -> DirectUploadRow | None:
        """The upload when it exists and belongs to `client_id` (another client's is None: not found)."""
        row = (await conn.execute(sa.select(direct_uploads).where(
            direct_uploads.c.id == upload_id, direct_uploads.c.client_id == client_id))).first()
        return _row(row) if row else None

    async def claim(self, conn: AsyncConnection, upload_id: str, client_id: str, now: int,
                    stale_before: int) -> bool:
        """Mark the upload as being completed, in one conditional UPDATE, when it is not completed, not
        expired and no other completion holds it (a claim older than `stale_before` died with its process).
        False when any of that is not so."""
        result = await conn.execute(sa.update(direct_uploads).where(
            direct_uploads.c.id == upload_id, direct_uploads.c.client_id == client_id,
            direct_uploads.c.binary_id.is_(None), direct_uploads.c.expires > now,
            sa.or_(direct_uploads.c.completing.is_(None), direct_uploads.c.completing < stale_before),
        ).values(completing=now))
        return bool(result.rowcount == 1)

    async def unclaim(self, conn: AsyncConnection, upload_id: str) -> None:
        """Give the upload back to its client after a completion that may be retried (bytes missing)."""
        await conn.execute(sa.update(direct_uploads).where(direct_uploads.c.id == upload_id)
                           .values(completing=None))

    async def completed(self, conn: AsyncConnection, upload_id: str, binary_id: str) -> None:
        """Record the Binary the upload became, so a repeated completion can answer with it."""
        await conn.execute(sa.update(direct_uploads).where(direct_uploads.c.id == upload_id)
                           .values(binary_id=binary_id, completing=None))

    async def expired(self, conn: AsyncConnection, now: int, stale_before: int, limit: int = 100
                      ) -> list[DirectUploadRow]:
        """Uploads past their expiry that no live completion holds (unclaimed, or claimed before
        `stale_before`), completed ones included (their rows are only kept to answer repeats)."""
        stmt = sa.select(direct_uploads).where(
            direct_uploads.c.expires <= now,
            sa.or_(direct_uploads.c.completing.is_(None), direct_uploads.c.completing < stale_before),
        ).order_by(direct_uploads.c.expires).limit(limit)
        return [_row(r) for r in (await conn.execute(stmt)).all()]

    async def remove(self, conn: AsyncConnection, upload_id: str) -> None:
        """Forget an upload (its blob, if any is left, is the blob registry's business)."""
        await conn.execute(sa.delete(direct_uploads).where(direct_uploads.c.id == upload_id))
