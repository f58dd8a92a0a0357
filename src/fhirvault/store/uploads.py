"""The table of resumable uploads (tus): how far each has come, who owns it, and where its bytes are staged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.schema import metadata

# One row per resumable upload. Its bytes are staged under a pending blob of the blob registry
# (`blob_id`, registered when the upload is created), so every byte has an owner from the first; the
# generic sweeper leaves pending blobs that an upload row owns alone, and the upload sweeper releases
# them once the upload has expired. `received` (the tus offset) is the number of bytes durably staged:
# anything a backend holds beyond it (a PATCH that failed its checksum, a crash mid-PATCH) is overwritten by the next
# PATCH. `staging` is the backend's own JSON state (S3: the multipart upload id, the parts' ETags and
# the name of the object holding the tail). `lease`/`lease_until` make one PATCH at a time write, across
# processes and nodes. `binary_id` is set in the transaction that creates the Binary.
uploads = sa.Table(
    "uploads", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),  # the client id that created it
    sa.Column("blob_id", sa.String(64), nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("received", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("filename", sa.Text, nullable=True),
    sa.Column("security_context", sa.Text, nullable=True),
    sa.Column("upload_metadata", sa.Text, nullable=False),  # Upload-Metadata as sent, for HEAD
    sa.Column("staging", sa.Text, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),  # microseconds since the epoch
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Column("lease", sa.String(32), nullable=True),
    sa.Column("lease_until", sa.BigInteger, nullable=True),
    sa.Column("binary_id", sa.String(64), nullable=True),
    sa.Column("binary_version", sa.Integer, nullable=True),
    sa.Index("ix_uploads_expires", "expires"),
    sa.Index("ix_uploads_blob_id", "blob_id"),
)


@dataclass(frozen=True)
class UploadRow:
    """One upload as stored; times in microseconds since the epoch."""

    id: str
    owner: str
    blob_id: str
    length: int
    offset: int
    content_type: str
    filename: str | None
    security_context: str | None
    metadata: str
    staging: dict[str, Any]
    created: int
    expires: int
    binary_id: str | None
    binary_version: int | None

    @property
    def complete(self) -> bool:
        """Whether the upload has become a Binary (the last byte arrived and the Binary was created)."""
        return self.binary_id is not None


def _row(row: Any) -> UploadRow:
    return UploadRow(row.id, row.owner, row.blob_id, row.length, row.received, row.content_type, row.filename,
                     row.security_context, row.upload_metadata, json.loads(row.staging), row.created, row.expires,
                     row.binary_id, row.binary_version)


class UploadRows:
    """SQL access to the uploads table; every method runs inside a transaction the caller owns."""

    async def add(self, conn: AsyncConnection, upload: UploadRow) -> None:
        """Inserts a new upload row (offset 0, no lease) in the caller's transaction."""
        await conn.execute(sa.insert(uploads).values(
            id=upload.id, owner=upload.owner, blob_id=upload.blob_id, length=upload.length, received=upload.offset,
            content_type=upload.content_type, filename=upload.filename,
            security_context=upload.security_context, upload_metadata=upload.metadata,
            staging=json.dumps(upload.staging), created=upload.created, expires=upload.expires))

    async def get(self, conn: AsyncConnection, upload_id: str) -> UploadRow | None:
        """The upload with id `upload_id`, or None."""
        row = (await conn.execute(sa.select(uploads).where(uploads.c.id == upload_id))).first()
        return _row(row) if row else None

    async def lease(self, conn: AsyncConnection, upload_id: str, token: str, now: int, until: int,
                    offset: int | None = None) -> bool:
        """Take the upload's write lease (free, expired, or already ours), only while its offset is
        `offset` when given; False while another holds it (or the offset differs)."""
        where = [uploads.c.id == upload_id,
                 sa.or_(uploads.c.lease.is_(None), uploads.c.lease_until < now, uploads.c.lease == token)]
        if offset is not None:
            where.append(uploads.c.received == offset)
        result = await conn.execute(sa.update(uploads).where(*where).values(lease=token, lease_until=until))
        return bool(result.rowcount == 1)

    async def is_leased(self, conn: AsyncConnection, upload_id: str, now: int) -> bool:
        """Whether a request holds the upload's write lease at `now`."""
        row = (await conn.execute(sa.select(uploads.c.lease_until).where(
            uploads.c.id == upload_id, uploads.c.lease.is_not(None), uploads.c.lease_until >= now))).first()
        return row is not None

    async def release_lease(self, conn: AsyncConnection, upload_id: str, token: str) -> None:
        """Lets go of the write lease when `token` still holds it (no-op otherwise)."""
        await conn.execute(sa.update(uploads).where(uploads.c.id == upload_id, uploads.c.lease == token)
                           .values(lease=None, lease_until=None))

    async def advance(self, conn: AsyncConnection, upload_id: str, token: str, offset: int,
                      staging: dict[str, Any], expires: int, release: bool) -> bool:
        """Record bytes staged up to `offset` under the lease `token` (letting the lease go when `release`);
        False when the lease was lost."""
        values: dict[str, Any] = {"received": offset, "staging": json.dumps(staging), "expires": expires}
        if release:
            values.update(lease=None, lease_until=None)
        result = await conn.execute(sa.update(uploads).where(uploads.c.id == upload_id, uploads.c.lease == token)
                                    .values(**values))
        return bool(result.rowcount == 1)

    async def mark_complete(self, conn: AsyncConnection, upload_id: str, binary_id: str, version: int) -> None:
        """Records the Binary (id, version) the upload became and lets go of its lease."""
        await conn.execute(sa.update(uploads).where(uploads.c.id == upload_id).values(
            binary_id=binary_id, binary_version=version, lease=None, lease_until=None))

    async def remove(self, conn: AsyncConnection, upload_id: str) -> bool:
        """Deletes the upload row; False when it was gone already."""
        result = await conn.execute(sa.delete(uploads).where(uploads.c.id == upload_id))
        return bool(result.rowcount == 1)

    async def expired(self, conn: AsyncConnection, now: int, limit: int = 100) -> list[UploadRow]:
        """Uploads whose expiry has passed (and whose lease, if any, has too), oldest first."""
        stmt = sa.select(uploads).where(
            uploads.c.expires < now, sa.or_(uploads.c.lease_until.is_(None), uploads.c.lease_until < now),
        ).order_by(uploads.c.expires).limit(limit)
        return [_row(r) for r in (await conn.execute(stmt)).all()]

    async def remove_expired(self, conn: AsyncConnection, upload_id: str, now: int) -> bool:
        """Delete the row only while it is still expired and unleased (a PATCH may have revived it)."""
        result = await conn.execute(sa.delete(uploads).where(
            uploads.c.id == upload_id, uploads.c.expires < now,
            sa.or_(uploads.c.lease_until.is_(None), uploads.c.lease_until < now)))
        return bool(result.rowcount == 1)
