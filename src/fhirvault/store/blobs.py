"""The blob registry (which blobs exist, their state, size and hashes) and the chunk table of the database store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
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
#
# Deduplication: a blob committed while DEDUP_ENABLED holds `content_key` (its SHA-256 and size), which a
# unique index keeps to one committed blob per content; new content equal to it refers to that blob
# instead of committing its own copy (`settle`). `refs` counts the resource versions that refer to the
# blob. It is a column, changed in the transaction that inserts or expunges those versions, rather than
# a count derived by query, because every decision then reads and writes the blob's own row: on
# PostgreSQL (READ COMMITTED) a conditional UPDATE of one row waits for a concurrent writer of that row
# and re-checks its condition on the row as committed, so an expunge releasing the last reference and an
# upload taking a new one are ordered by the row lock and exactly one of them sees the other. A count
# derived by a subquery over resource_versions would be judged on the statement's snapshot instead, and
# an expunge could release a blob an upload was committing a reference to at that moment.
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
    # Resource versions referring to the blob (see above); a committed blob is released when it reaches 0.
    sa.Column("refs", sa.Integer, nullable=False, server_default="0"),
    # "<sha256 hex>:<size>" of a committed blob that equal content may share; None otherwise.
    sa.Column("content_key", sa.String(96), nullable=True),
    sa.Index("ix_blobs_state_created", "state", "created"),
    sa.Index("ux_blobs_content_key", "content_key", unique=True),
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


class ContentRace(Exception):
    """A concurrent writer changed the blob this transaction wanted (committed the same content first, or
    released the blob being referred to); the caller retries the whole transaction."""


@dataclass(frozen=True)
class BlobStats:
    """What the registry holds: committed blobs, their bytes, and the bytes sharing saves (every
    reference beyond a blob's first would otherwise have its own copy)."""

    blobs: int
    bytes_stored: int
    bytes_saved: int
    references: int
    pending: int
    released: int


def content_key(sha256_hex: str, size: int) -> str:
    """The key under which equal content is found: its SHA-256 (hex) and size in bytes."""
    return f"{sha256_hex}:{size}"


@dataclass(frozen=True)
class BlobRecord:
    """One registry row: state, where the bytes are (`storage_key`), size in bytes, SHA-256 (hex), SHA-1
    (base64), creation time (microseconds since the epoch) and how many versions refer to it."""

    id: str
    state: str
    backend: str
    storage_key: str
    size: int | None
    sha256: str | None
    sha1: str | None
    created: int
    refs: int = 0  # resource versions referring to the blob


def _record(row: Any) -> BlobRecord:
    return BlobRecord(row.id, row.state, row.backend, row.storage_key, row.size, row.sha256, row.sha1, row.created,
                      int(row.refs or 0))


class BlobRegistry:
    """SQL access to the registry; every method runs inside a transaction the caller owns."""

    async def add_pending(self, conn: AsyncConnection, blob_id: str, backend: str, storage_key: str,
                          created: int) -> None:
        """Inserts a pending blob row for `storage_key` in `backend` (created: microseconds since the epoch);
        committed before the first byte is stored, so the sweeper can find what a crash leaves."""
        await conn.execute(sa.insert(blobs).values(
            id=blob_id, state=PENDING, backend=backend, storage_key=storage_key, created=created))

    async def settle(self, conn: AsyncConnection, blob_id: str, size: int, sha256: str, sha1: str, *,
                     dedup: bool) -> str:
        """THE dedup decision, made once on the commit path of every upload (raw, JSON, $binary-access-write,
        ingestion, Attachment data moved out): returns the id of the blob the new version must refer to.

        With `dedup`, when a committed blob already holds equal content (same SHA-256 and size), this
        pending blob is released in the same transaction (its bytes are removed once it commits) and the
        existing blob's id is returned; otherwise this blob goes pending -> committed under the content's
        key. Without `dedup` it is committed with no key and shares nothing. The reference itself is
        counted when the version is inserted (ResourceStore.write -> add_reference).
        Raises LookupError when this blob is no longer pending (the sweeper released it: the upload took
        longer than the grace period); ContentRace when a concurrent upload committed the same content
        first (the unique index decides, on PostgreSQL by waiting for that transaction): retry."""
        key = content_key(sha256, size) if dedup else None
        if key is not None:
            rows = (await conn.execute(sa.select(blobs.c.id, blobs.c.backend).where(
                sa.or_(blobs.c.content_key == key, blobs.c.id == blob_id)))).all()
            own = next((r.backend for r in rows if r.id == blob_id), None)
            existing = next((r for r in rows if r.id != blob_id), None)
            if existing is not None and existing.backend == own:
                if not await self.release_pending(conn, blob_id):
                    raise LookupError(f"blob {blob_id} is no longer pending")
                return str(existing.id)
            if existing is not None:
                # Equal content kept by another backend (stored before STORAGE_MODE changed): this server
                # cannot read it, so the upload keeps its own copy, without the key the other one holds.
                key = None
        update = sa.update(blobs).where(blobs.c.id == blob_id, blobs.c.state == PENDING).values(
            state=COMMITTED, size=size, sha256=sha256, sha1=sha1, content_key=key)
        try:
            result = await conn.execute(update)
        except IntegrityError as exc:  # the transaction is spoilt on PostgreSQL: the caller starts over
            raise ContentRace(f"content {key} was committed concurrently") from exc
        if result.rowcount != 1:
            raise LookupError(f"blob {blob_id} is no longer pending")
        return blob_id

    async def add_reference(self, conn: AsyncConnection, blob_id: str) -> None:
        """One more resource version refers to the committed blob; ContentRace when it is not committed
        (a concurrent expunge released its last reference after it was chosen)."""
        result = await conn.execute(sa.update(blobs).where(blobs.c.id == blob_id, blobs.c.state == COMMITTED)
                                    .values(refs=blobs.c.refs + 1))
        if result.rowcount != 1:
            raise ContentRace(f"blob {blob_id} was released concurrently")

    async def drop_references(self, conn: AsyncConnection, counts: dict[str, int]) -> list[BlobRecord]:
        """`counts[blob_id]` versions referring to each blob are gone (expunge, same transaction); returns
        the blobs whose last reference went, now released (and no longer findable by content), whose bytes
        the caller removes after the commit."""
        released: list[BlobRecord] = []
        for blob_id, count in sorted(counts.items()):
            await conn.execute(sa.update(blobs).where(blobs.c.id == blob_id).values(refs=blobs.c.refs - count))
            result = await conn.execute(sa.update(blobs).where(
                blobs.c.id == blob_id, blobs.c.state == COMMITTED, blobs.c.refs <= 0).values(
                state=RELEASED, content_key=None))
            if result.rowcount == 1:
                record = await self.get(conn, blob_id)
                if record is not None:
                    released.append(record)
        return released

    async def stats(self, conn: AsyncConnection) -> BlobStats:
        """Counts over the whole registry (one statement)."""
        committed = blobs.c.state == COMMITTED
        size = sa.func.coalesce(blobs.c.size, 0)
        row = (await conn.execute(sa.select(
            sa.func.count().filter(committed),
            sa.func.coalesce(sa.func.sum(size).filter(committed), 0),
            sa.func.coalesce(sa.func.sum(size * (blobs.c.refs - 1)).filter(committed, blobs.c.refs > 1), 0),
            sa.func.coalesce(sa.func.sum(blobs.c.refs).filter(committed), 0),
            sa.func.count().filter(blobs.c.state == PENDING),
            sa.func.count().filter(blobs.c.state == RELEASED),
        ))).one()
        return BlobStats(*(int(v or 0) for v in row))

    async def release_pending(self, conn: AsyncConnection, blob_id: str, created_before: int | None = None) -> bool:
        """pending -> released, only when still pending (and created before `created_before`, microseconds);
        False when it was committed (or is gone) meanwhile, and its bytes must then stay."""
        where = [blobs.c.id == blob_id, blobs.c.state == PENDING]
        if created_before is not None:
            where.append(blobs.c.created < created_before)
        result = await conn.execute(sa.update(blobs).where(*where).values(state=RELEASED))
        return bool(result.rowcount == 1)

    async def get(self, conn: AsyncConnection, blob_id: str) -> BlobRecord | None:
        """The blob row with id `blob_id`, or None."""
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
