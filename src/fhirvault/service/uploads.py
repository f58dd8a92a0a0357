"""Resumable uploads: bytes staged over many requests (and nodes) into one pending blob, then a Binary.

The protocol (tus 1.0) is the HTTP edge's business (http/tus_api.py); this module owns the use case:
an upload is created with its length and what the Binary will be, takes its bytes by appends at the
recorded offset, and when the last byte arrives becomes a Binary through the same staging and commit
path as a raw `POST /Binary` (BinaryService.write_staged: one version, the blob pending -> committed in
the version's transaction). State lives in the `uploads` table, so offsets survive restarts and every
node sharing the database and the store can go on with an upload another node began.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from fhirvault.blobs.base import BlobStore
from fhirvault.clock import now_us
from fhirvault.errors import (
    ChecksumMismatch,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    Locked,
    NotFound,
    TooLarge,
)
from fhirvault.fhir.binary import check_content_type
from fhirvault.security.principal import Principal
from fhirvault.service.binaries import BinaryService, ContentMeter, StagedContent
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.service.resources import WriteResult
from fhirvault.store.blobs import BlobRegistry
from fhirvault.store.database import Database
from fhirvault.store.uploads import UploadRow as UploadRow  # what the use cases return
from fhirvault.store.uploads import UploadRows

log = logging.getLogger("fhirvault.uploads")

# Checksum algorithms a PATCH may be verified with (tus Checksum extension), by their tus names.
CHECKSUM_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
# A PATCH holds the upload's write lease for this long, renewed while its body keeps arriving; a process
# that died mid-PATCH blocks the upload no longer than this.
LEASE_SECONDS = 60
# How long a PATCH waits for the lease of a PATCH still finishing (a client that reconnected after a
# cut often comes back before the server has noticed the cut) before answering 423.
LEASE_WAIT_SECONDS = 5.0
# Uploads whose running digests this process keeps, so a finished upload need not be read back to be
# hashed; an upload continued on another process or node is read back once at the end instead.
DIGEST_CACHE_SIZE = 256


@dataclass(frozen=True)
class Checksum:
    """The checksum a client sent for one PATCH body: algorithm name (tus) and raw digest."""

    algorithm: str
    digest: bytes


@dataclass(frozen=True)
class AppendResult:
    """The upload after an append, and the Binary when this append completed it."""

    upload: UploadRow
    written: WriteResult | None = None


def owner_of(ctx: RequestContext) -> str:
    """Who an upload belongs to: the OAuth2 client id (the server itself for system callers)."""
    principal = ctx.principal
    if isinstance(principal, Principal):
        return f"client:{principal.client_id}"
    return f"system:{principal.reason}"


class UploadService:
    """Create, append to, inspect, terminate and expire resumable uploads. `store` stages the bytes
    (the blob store, or in inline mode the database store, whose bytes go into the resource at the end);
    `max_bytes` is MAX_BINARY_BYTES, `expiry_seconds` UPLOAD_EXPIRY_SECONDS."""

    def __init__(self, db: Database, binaries: BinaryService, store: BlobStore, registry: BlobRegistry,
                 *, max_bytes: int, expiry_seconds: int) -> None:
        self.db = db
        self.binaries = binaries
        self.store = store
        self.registry = registry
        self.rows = UploadRows()
        self.max_bytes = max_bytes
        self.expiry_us = expiry_seconds * 1_000_000
        self._digests: OrderedDict[str, tuple[int, ContentMeter]] = OrderedDict()

    # -- create -----------------------------------------------------------------------------------
    async def create(self, ctx: RequestContext, *, length: int, content_type: str, filename: str | None,
                     security_context: str | None, metadata: str) -> UploadRow:
        """A new upload of `length` bytes for a Binary of `content_type`. Checked now, as `POST /Binary`
        checks them: Binary create scope (Forbidden), update rights on `security_context` (Forbidden, or
        NotFound when the caller may not even read it), the content type (Invalid), the size limit
        (TooLarge). The pending blob that will hold the bytes is registered in the same transaction."""
        resources = self.binaries.resources
        resources.require(ctx, "create", "Binary")
        if length < 0:
            raise Invalid("Upload-Length must be a non-negative integer")
        if length > self.max_bytes:
            raise TooLarge(f"An upload of {length} bytes is over the limit of {self.max_bytes} bytes "
                           "(MAX_BINARY_BYTES)")
        try:
            content_type = check_content_type(content_type, "The contentType of Upload-Metadata")
        except ValueError as exc:
            raise Invalid(str(exc), expression="Binary.contentType") from None
        # The Binary this upload will make must be one the caller may create (a securityContext needs
        # update rights on what it names; a patient-context client's Binary must stay in its compartment).
        await self._check_may_create(ctx, security_context)
        now = now_us()
        upload = UploadRow(
            id=uuid.uuid4().hex, owner=owner_of(ctx), blob_id=uuid.uuid4().hex, length=length, offset=0,
            content_type=content_type, filename=filename, security_context=security_context,
            metadata=metadata, staging=self.store.begin_staging(length), created=now,
            expires=now + self.expiry_us, binary_id=None, binary_version=None)
        async with self.db.write() as conn:
            await self.registry.add_pending(conn, upload.blob_id, self.store.name, upload.blob_id, now)
            await self.rows.add(conn, upload)
        self._digests[upload.id] = (0, ContentMeter(length))
        self._trim_digests()
        return upload

    async def _check_may_create(self, ctx: RequestContext, security_context: str | None) -> None:
        access = self.binaries.resources.access
        probe: dict[str, Any] = {"resourceType": "Binary"}
        if security_context is not None:
            probe["securityContext"] = {"reference": security_context}
        async with self.db.read() as conn:
            if await access.can_see(ctx, conn, probe, "create"):
                return
        if security_context is None:
            raise Forbidden("This client may not create a Binary without a securityContext")
        raise Forbidden(f"This client may not create a Binary whose securityContext is {security_context} "
                        "(that needs update rights on it)")

    # -- status -----------------------------------------------------------------------------------
    async def settled_status(self, ctx: RequestContext, upload_id: str) -> UploadRow:
        """`status` once no PATCH is writing (waiting up to LEASE_WAIT_SECONDS): a client that lost its
        connection asks for the offset at once, and must get the bytes the cut PATCH still stored."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_WAIT_SECONDS
        while True:
            upload, leased = await self._status(ctx, upload_id)
            if not leased or loop.time() >= deadline:
                return upload
            await asyncio.sleep(0.1)

    async def status(self, ctx: RequestContext, upload_id: str) -> UploadRow:
        """The caller's own upload; NotFound for an unknown one or another client's, Gone once expired."""
        return (await self._status(ctx, upload_id))[0]

    async def _status(self, ctx: RequestContext, upload_id: str) -> tuple[UploadRow, bool]:
        self.binaries.resources.require(ctx, "create", "Binary")
        async with self.db.read() as conn:
            upload = await self.rows.get(conn, upload_id)
            leased = upload is not None and await self.rows.is_leased(conn, upload_id, now_us())
        if upload is None or upload.owner != owner_of(ctx):
            raise NotFound(f"There is no upload {upload_id}")
        if upload.expires < now_us():
            raise Gone(f"The upload {upload_id} has expired")
        return upload, leased

    # -- append -----------------------------------------------------------------------------------
    async def append(self, ctx: RequestContext, upload_id: str, offset: int, chunks: AsyncIterator[bytes], *,
                     declared: int | None, checksum: Checksum | None) -> AppendResult:
        """Stage the chunks at `offset`, which must be the upload's offset (Conflict otherwise). `chunks`
        ends early when the client went away: what arrived is kept (unless a checksum was sent, which
        then cannot be verified). `declared` is the body's Content-Length. A body past the upload's
        length is Invalid; a checksum that does not match is ChecksumMismatch and keeps nothing. When
        the last byte arrives, the Binary is created (see `_complete`)."""
        upload = await self.status(ctx, upload_id)
        if upload.complete:
            if offset == upload.offset and not declared:
                return AppendResult(upload)
            raise Conflict(f"The upload {upload_id} is complete; it takes no more bytes")
        if offset != upload.offset:
            raise Conflict(f"Upload-Offset {offset} is not the upload's offset {upload.offset}")
        if declared is not None and offset + declared > upload.length:
            raise Invalid(f"{declared} bytes at offset {offset} go past the Upload-Length of {upload.length}")
        if checksum is not None and checksum.algorithm not in CHECKSUM_ALGORITHMS:
            raise Invalid(f"Checksum algorithm '{checksum.algorithm}' is not supported; use one of "
                          + ", ".join(CHECKSUM_ALGORITHMS))
        lease = uuid.uuid4().hex
        # Leased only at this offset: the row read above is then current (staging changes with the offset).
        await self._take_lease(upload_id, lease, offset)
        done = False
        try:
            result = await self._append_leased(ctx, upload, lease, chunks, declared, checksum)
            done = True  # recording the bytes (or the Binary) let the lease go
            return result
        finally:
            if not done:
                async with self.db.write() as conn:
                    await self.rows.release_lease(conn, upload_id, lease)

    async def _append_leased(self, ctx: RequestContext, upload: UploadRow, lease: str, chunks: AsyncIterator[bytes],
                             declared: int | None, checksum: Checksum | None) -> AppendResult:
        cached = self._digests.pop(upload.id, None)
        meter = cached[1] if cached is not None and cached[0] == upload.offset else None
        if upload.offset == upload.length:
            # Every byte is staged (or there are none), but the Binary was not made yet (an empty upload,
            # or the process died in between): make it.
            return await self._completed(ctx, upload, meter)
        body = _Body(self, upload, lease, checksum)
        stream = body.read(chunks)
        if meter is not None:
            stream = meter.hashed_pieces(stream)
        staging = await self.store.append(upload.blob_id, upload.offset, stream, upload.staging,
                                          length=upload.length)
        if checksum is not None and (body.received != declared or body.digest() != checksum.digest):
            await self.store.drop_staging(upload.blob_id, upload.offset, staging, keep=upload.staging)
            if body.received != declared:
                # The client went away mid-body: nothing to verify, nobody to answer.
                async with self.db.write() as conn:
                    await self.rows.release_lease(conn, upload.id, lease)
                return AppendResult(upload)
            raise ChecksumMismatch(f"The {checksum.algorithm} checksum of the {body.received} bytes sent does not "
                                   "match Upload-Checksum; none of them was kept")
        new_offset = upload.offset + body.received
        expires = now_us() + self.expiry_us
        async with self.db.write() as conn:
            # The last bytes keep the lease until the Binary is made (mark_complete lets it go).
            recorded = await self.rows.advance(conn, upload.id, lease, new_offset, staging, expires,
                                               release=new_offset != upload.length)
        if not recorded:
            # Another request holds the upload now: its bytes past our offset must stay.
            raise Conflict(f"The upload {upload.id} was changed by another request meanwhile; ask for its offset")
        if staging != upload.staging:
            await self.store.drop_staging(upload.blob_id, new_offset, upload.staging, keep=staging)
        advanced = replace(upload, offset=new_offset, staging=staging, expires=expires)
        if meter is not None:
            self._digests[upload.id] = (new_offset, meter)
            self._trim_digests()
        if new_offset == upload.length:
            return await self._completed(ctx, advanced, meter)
        return AppendResult(advanced)

    async def _completed(self, ctx: RequestContext, upload: UploadRow, meter: ContentMeter | None) -> AppendResult:
        """The upload made into its Binary (see `_complete`), with the Binary's id and version recorded in
        the row returned, as `mark_complete` recorded them: the answer names the Binary it made."""
        written = await self._complete(ctx, upload, meter)
        made = replace(upload, binary_id=written.stored.id, binary_version=written.stored.version_id)
        return AppendResult(made, written)

    async def _take_lease(self, upload_id: str, lease: str, offset: int | None = None) -> None:
        """The upload's write lease (at `offset` when given: Conflict once it has another); Locked when
        another request still holds it after LEASE_WAIT_SECONDS; NotFound when the upload went."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_WAIT_SECONDS
        while True:
            now = now_us()
            async with self.db.write() as conn:
                if await self.rows.lease(conn, upload_id, lease, now, now + LEASE_SECONDS * 1_000_000, offset):
                    return
                current = await self.rows.get(conn, upload_id)
            if current is None:
                raise NotFound(f"There is no upload {upload_id}")
            if offset is not None and current.offset != offset:
                raise Conflict(f"Upload-Offset {offset} is not the upload's offset {current.offset}")
            if loop.time() >= deadline:
                raise Locked(f"Another request is writing to upload {upload_id}; retry shortly")
            await asyncio.sleep(0.2)

    async def renew_lease(self, upload_id: str, lease: str) -> None:
        """Extend the lease of a PATCH whose body is still arriving; Conflict when it was taken over."""
        now = now_us()
        async with self.db.write() as conn:
            if not await self.rows.lease(conn, upload_id, lease, now, now + LEASE_SECONDS * 1_000_000):
                raise Conflict(f"The upload {upload_id} was taken over by another request")

    # -- completion -------------------------------------------------------------------------------
    async def _complete(self, ctx: RequestContext, upload: UploadRow, meter: ContentMeter | None) -> WriteResult:
        """Turn the staged bytes into a Binary exactly as a raw `POST /Binary` would: content up to the
        inline limit goes into the resource (and the staging blob goes), larger content commits the
        pending blob with the version. An upload that cannot become a Binary (the caller lost the right
        meanwhile, ...) is removed with its bytes, and the error raised."""
        key = upload.blob_id
        try:
            await self.store.finish_staging(key, upload.staging, upload.length)
            if meter is None or meter.size != upload.length:
                meter = ContentMeter(upload.length)
                async for _ in meter.hashed_pieces(self.store.get(key)):
                    pass
            inline = upload.length <= self.binaries.inline_limit
            if inline:
                data = bytearray()
                async for chunk in self.store.get(key):
                    data += chunk
                staged = StagedContent(meter.size, meter.sha256_hex, meter.sha1_b64, inline=bytes(data))
            else:
                staged = StagedContent(meter.size, meter.sha256_hex, meter.sha1_b64, blob_id=key)

            async def record(uow: UnitOfWork, result: WriteResult) -> None:
                await self.rows.mark_complete(uow.conn, upload.id, result.stored.id, result.stored.version_id)

            written = await self.binaries.write_staged(
                ctx, None, staged, content_type=upload.content_type, security_context=upload.security_context,
                filename=upload.filename, then=record)
        except BaseException:
            await asyncio.shield(self._forget(upload.id, key))
            raise
        finally:
            self._digests.pop(upload.id, None)
        if inline:
            await self.binaries.discard_pending(key)
        return written

    async def _forget(self, upload_id: str, blob_id: str) -> None:
        """Remove the upload row, then its pending blob with its bytes (a committed blob stays)."""
        try:
            async with self.db.write() as conn:
                await self.rows.remove(conn, upload_id)
        except Exception:  # noqa: BLE001 - the expiry sweep removes it later
            log.warning("could not remove upload %s now; it expires later", upload_id, exc_info=True)
            return
        await self.binaries.discard_pending(blob_id)

    # -- termination and expiry -------------------------------------------------------------------
    async def terminate(self, ctx: RequestContext, upload_id: str) -> None:
        """Remove the caller's upload and its staged bytes (tus Termination). A completed upload's Binary
        stays; only the record of the upload goes. Locked while a PATCH is writing to it."""
        upload = await self.status(ctx, upload_id)
        lease = uuid.uuid4().hex
        await self._take_lease(upload_id, lease)
        self._digests.pop(upload_id, None)
        await self._forget(upload.id, upload.blob_id)

    async def sweep_expired(self) -> int:
        """Remove uploads past their expiry with the bytes of the unfinished ones; returns how many."""
        removed = 0
        while True:
            now = now_us()
            async with self.db.read() as conn:
                expired = await self.rows.expired(conn, now)
            if not expired:
                return removed
            for upload in expired:
                async with self.db.write() as conn:
                    if not await self.rows.remove_expired(conn, upload.id, now):
                        continue
                # Pending: released and removed; committed (the upload finished): kept.
                await self.binaries.discard_pending(upload.blob_id)
                self._digests.pop(upload.id, None)
                removed += 1

    def _trim_digests(self) -> None:
        while len(self._digests) > DIGEST_CACHE_SIZE:
            self._digests.popitem(last=False)


class _Body:
    """One PATCH body on its way to the store: counted against the upload's length, digested for its
    checksum, and keeping the write lease alive while it arrives."""

    def __init__(self, service: UploadService, upload: UploadRow, lease: str, checksum: Checksum | None) -> None:
        self.service = service
        self.upload = upload
        self.lease = lease
        self.received = 0
        self._hash = CHECKSUM_ALGORITHMS[checksum.algorithm]() if checksum is not None else None

    async def read(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        room = self.upload.length - self.upload.offset
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + LEASE_SECONDS / 3
        async for chunk in chunks:
            self.received += len(chunk)
            if self.received > room:
                raise Invalid(f"The body goes past the Upload-Length of {self.upload.length} bytes")
            if self._hash is not None:
                if len(chunk) > 65536:
                    await asyncio.to_thread(self._hash.update, chunk)
                else:
                    self._hash.update(chunk)
            if loop.time() >= renew_at:
                await self.service.renew_lease(self.upload.id, self.lease)
                renew_at = loop.time() + LEASE_SECONDS / 3
            yield chunk

    def digest(self) -> bytes | None:
        return self._hash.digest() if self._hash is not None else None
