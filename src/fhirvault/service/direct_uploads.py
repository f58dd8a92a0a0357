"""Direct uploads to the object store (s3 mode): `Binary/$upload-url` hands a client presigned URLs of the
store, the client PUTs the bytes there (they never pass through fhirvault), and `Binary/$upload-complete`
verifies what arrived and creates the Binary exactly as a raw `POST /Binary` would."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import re
import uuid
from dataclasses import dataclass

from fhirvault.blobs.base import BlobStore, PresignedUploads
from fhirvault.clock import now_us
from fhirvault.errors import Conflict, Forbidden, Gone, Invalid, NotFound, TooLarge, Unimplemented, Unprocessable
from fhirvault.fhir.binary import check_content_type, check_reference
from fhirvault.security.principal import Principal
from fhirvault.service.binaries import BinaryService, ContentMeter, StagedContent
from fhirvault.service.context import RequestContext
from fhirvault.service.resources import WriteResult
from fhirvault.store.blobs import BlobRegistry
from fhirvault.store.database import Database
from fhirvault.store.direct_uploads import DirectUploadRow, DirectUploadRows

log = logging.getLogger("fhirvault.direct_uploads")

# The shape of the ids $upload-url hands out (uuid4().hex).
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")

# S3's limits: at most 10,000 parts, each at least 5 MiB but the last; one PUT at most 5 GiB.
MAX_PARTS = 10_000
MIN_PART = 5 * 1024 * 1024
MAX_SINGLE_PUT = 5 * 1024**3
EMPTY_SHA256_HEX = hashlib.sha256(b"").hexdigest()
EMPTY_SHA256_B64 = base64.b64encode(hashlib.sha256(b"").digest()).decode("ascii")
# fhirvault's own bound on a part (S3 allows 5 GiB): every part size fits an R4 integer.
MAX_PART = 1024**3


@dataclass(frozen=True)
class UploadRequest:
    """What a client declares before uploading: `size` in bytes, `sha256_b64` the base64 SHA-256 of the
    content (optional), `security_context` a `Type/id` reference (optional)."""

    content_type: str
    size: int
    sha256_b64: str | None = None
    security_context: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class UploadTarget:
    """One PUT the client makes: `url` takes exactly `size` bytes; `part` is the part number (1-based) of
    a multipart upload, None for the single PUT of a whole object."""

    url: str
    size: int
    part: int | None = None


@dataclass(frozen=True)
class DirectUpload:
    """The answer to `$upload-url`: the upload's id (for `$upload-complete`), when its URLs expire
    (microseconds since the epoch), the PUTs to make and the headers each PUT must carry."""

    id: str
    expires_us: int
    targets: list[UploadTarget]
    headers: dict[str, str]


@dataclass(frozen=True)
class Completion:
    """The Binary an upload became; `repeated` when an earlier completion had already created it."""

    result: WriteResult
    repeated: bool = False


class DirectUploadService:
    """The direct upload use cases. `store` is the server's blob store; direct uploads are offered only
    when it can presign uploads (s3 mode). `ttl_seconds` is the presigned URLs' lifetime; `part_bytes`
    the size above which an upload goes in parts of that size; `grace_seconds` the pending-blob grace
    period, after which a completion that died with its process no longer holds its upload."""

    def __init__(self, db: Database, binaries: BinaryService, store: BlobStore | None, registry: BlobRegistry,
                 *, ttl_seconds: int, part_bytes: int, grace_seconds: int) -> None:
        self.db = db
        self.binaries = binaries
        self.store = store
        self.presigner = store if isinstance(store, PresignedUploads) else None
        self.registry = registry
        self.rows = DirectUploadRows()
        self.ttl_seconds = ttl_seconds
        self.part_bytes = max(MIN_PART, part_bytes)
        self.grace_us = grace_seconds * 1_000_000

    @property
    def offered(self) -> bool:
        """Whether this server offers direct uploads (its store presigns uploads)."""
        return self.presigner is not None

    def require_offered(self) -> PresignedUploads:
        """The store's presigner; Unimplemented (501) when this server does not offer direct uploads."""
        if self.presigner is None:
            raise Unimplemented("Direct uploads to the object store are offered only in s3 storage mode "
                                "(STORAGE_MODE=s3); upload the content with POST /Binary instead")
        return self.presigner

    # -- $upload-url ------------------------------------------------------------------------------
    async def begin(self, ctx: RequestContext, request: UploadRequest) -> DirectUpload:
        """Register a pending blob and the upload, and presign its PUT (or one PUT per part above
        `part_bytes`). Forbidden without create rights on Binary or update rights on the securityContext
        target (as for POST /Binary); Invalid for a bad content type, size or hash; TooLarge above
        MAX_BINARY_BYTES; Unimplemented outside s3 mode."""
        presigner = self.require_offered()
        principal = _client(ctx)
        self.binaries.resources.require(ctx, "create", "Binary")
        content_type = _checked_content_type(request.content_type)
        security_context = _checked_reference(request.security_context)
        if request.size < 0:
            raise Invalid("size must be a whole number of bytes, 0 or more", expression="size")
        if request.size > self.binaries.max_binary_bytes:
            raise TooLarge(f"The content of {request.size} bytes is over the limit of "
                           f"{self.binaries.max_binary_bytes} bytes (MAX_BINARY_BYTES)")
        if request.size > MAX_PARTS * MAX_PART:
            raise TooLarge(f"A direct upload takes at most {MAX_PARTS * MAX_PART} bytes ({MAX_PARTS} parts of "
                           f"{MAX_PART} bytes)")
        # Empty content has one SHA-256: known, it lets even an empty upload be one checked PUT.
        sha256_b64 = request.sha256_b64 or (EMPTY_SHA256_B64 if request.size == 0 else None)
        sha256_hex = _sha256_hex(sha256_b64)
        if request.size == 0 and sha256_hex != EMPTY_SHA256_HEX:
            raise Invalid("sha256 is not the SHA-256 of empty content, but size is 0", expression="sha256")
        # The Binary as it will be written: the same check as at completion, before any URL is handed out.
        planned: dict[str, object] = {"resourceType": "Binary", "contentType": content_type}
        if security_context:
            planned["securityContext"] = {"reference": security_context}
        async with self.db.read() as conn:
            allowed = await self.binaries.resources.access.can_see(ctx, conn, planned, "create")
        if not allowed:
            raise Forbidden("This client may not create a Binary with this securityContext (it needs update "
                            "rights on the resource it names)")

        now = now_us()
        blob_id = uuid.uuid4().hex
        part_size = self._part_size(request.size, sha256_b64)
        multipart_id = await presigner.begin_parts(blob_id, content_type) if part_size else None
        row = DirectUploadRow(
            id=uuid.uuid4().hex, blob_id=blob_id, client_id=principal.client_id, content_type=content_type,
            size=request.size, sha256=sha256_hex, security_context=security_context, filename=request.filename,
            multipart_id=multipart_id, part_size=part_size, created=now, expires=now + self.ttl_seconds * 1_000_000,
            completing=None, binary_id=None)
        try:
            async with self.db.write() as conn:
                assert self.store is not None
                await self.registry.add_pending(conn, blob_id, self.store.name, blob_id, now)
                await self.rows.add(conn, row)
        except BaseException:
            if multipart_id is not None and self.store is not None:
                await self.store.delete(blob_id)  # aborts the multipart upload no row owns
            raise
        headers = {"Content-Type": content_type}
        if part_size is None:
            assert sha256_b64 is not None  # see _part_size
            headers["x-amz-checksum-sha256"] = sha256_b64
            url = await presigner.presigned_put_url(blob_id, expires_in=self.ttl_seconds, content_type=content_type,
                                                    size=request.size, sha256_b64=sha256_b64)
            return DirectUpload(row.id, row.expires, [UploadTarget(url, request.size)], headers)
        assert multipart_id is not None
        targets = []
        for number, size in enumerate(_part_sizes(request.size, part_size), start=1):
            url = await presigner.presigned_part_url(blob_id, multipart_id, number, size=size,
                                                     expires_in=self.ttl_seconds)
            targets.append(UploadTarget(url, size, number))
        # The parts carry no headers of their own: the content type was given when the upload began.
        return DirectUpload(row.id, row.expires, targets, {})

    def _part_size(self, size: int, sha256_b64: str | None) -> int | None:
        """The part size for an upload of `size` bytes; None when it is one PUT.

        One PUT only with a declared SHA-256: its URL stays valid until it expires, also after the Binary
        exists, and only the signed checksum keeps it from replacing the stored bytes with others (the
        store refuses bytes with another SHA-256). Without one, even small content goes as a multipart
        upload of one part, whose URL stops working once completion has joined the parts."""
        if sha256_b64 and size <= self.part_bytes and size <= MAX_SINGLE_PUT:
            return None
        if size <= self.part_bytes:
            return max(size, 1)
        return max(self.part_bytes, math.ceil(size / MAX_PARTS))

    # -- $upload-complete -------------------------------------------------------------------------
    async def complete(self, ctx: RequestContext, upload_id: str) -> Completion:
        """Verify the uploaded object (size, SHA-256) and create the Binary from it, as POST /Binary would
        (one version, size and hashes, content at or below INLINE_MAX_BYTES kept inline). NotFound for an
        upload this client did not begin (or one long gone); Gone once it expired; Conflict while the
        bytes are not all there (the upload stays: upload them and complete again) or while another
        completion runs; Unprocessable when size or hash differ (the object is removed, nothing stored).
        A repeated completion answers with the Binary the first one created."""
        presigner = self.require_offered()
        principal = _client(ctx)
        if not UPLOAD_ID.fullmatch(upload_id):
            raise NotFound(f"There is no direct upload {upload_id[:64]!r}: upload ids are 32 hex digits")
        now = now_us()
        async with self.db.write() as conn:
            row = await self.rows.get(conn, upload_id, principal.client_id)
            if row is None:
                raise NotFound(f"There is no direct upload {upload_id} of this client (never begun, or "
                               "expired and removed)")
            if row.binary_id is None and not await self.rows.claim(conn, upload_id, principal.client_id, now,
                                                                     now - self.grace_us):
                if row.expires <= now:
                    raise Gone(f"Direct upload {upload_id} expired; begin a new one with $upload-url")
                raise Conflict(f"Direct upload {upload_id} is being completed by another request")
        if row.binary_id is not None:
            stored = await self.binaries.resources.read(ctx, "Binary", row.binary_id)
            return Completion(WriteResult(stored, created=False), repeated=True)
        try:
            staged = await self._verified(presigner, row)
        except BaseException as exc:
            if isinstance(exc, Unprocessable):
                await self.binaries.discard_pending(row.blob_id)  # the row goes with the blob row
            else:
                await self._unclaim(row.id)
            raise
        try:
            result = await self.binaries.write_staged(
                ctx, None, staged, content_type=row.content_type, security_context=row.security_context,
                filename=row.filename)
        except BaseException:
            # write_staged discarded a staged blob; an inline one leaves the object to discard here.
            await self.binaries.discard_pending(row.blob_id)
            raise
        # Kept until it expires, so a repeated completion (a lost answer) gets the same Binary. Content kept
        # inline leaves its object to a pending blob, which the sweeper removes with the row.
        try:
            async with self.db.write() as conn:
                await self.rows.completed(conn, row.id, result.stored.id)
        except Exception:  # noqa: BLE001 - the Binary exists; only the answer to a repeat is lost
            log.warning("could not record that direct upload %s became Binary/%s", row.id, result.stored.id,
                        exc_info=True)
        return Completion(result)

    async def _verified(self, presigner: PresignedUploads, row: DirectUploadRow) -> StagedContent:
        """The uploaded object measured: size checked against the declaration before a byte is read, then
        read back once (streamed, hashed in a worker thread) for SHA-256 and SHA-1, which R4's
        Attachment.hash needs and which no object store keeps alongside a SHA-256."""
        if row.multipart_id is not None:
            await self._join_parts(presigner, row)
        found = await presigner.stat(row.blob_id)
        if found is None:
            raise Conflict("Nothing has been uploaded to the upload URL yet; PUT the content there, then "
                           "complete the upload again")
        if found.size != row.size:
            raise Unprocessable(f"The uploaded object has {found.size} bytes but the upload declared {row.size}; "
                                "it was removed and nothing was stored", code="invalid", expression="size")
        # A whole-object checksum only (a multipart upload's composite one, "...-3", is not the content's
        # SHA-256); the read-back below checks the content in every case.
        if row.sha256 and found.sha256_b64 and _digest_hex(found.sha256_b64) not in (None, row.sha256):
            raise Unprocessable("The object store's SHA-256 of the uploaded object differs from the declared "
                                "sha256; it was removed and nothing was stored", code="invalid", expression="sha256")
        assert self.store is not None
        if row.size <= self.binaries.inline_limit:
            content = b"".join([chunk async for chunk in self.store.get(row.blob_id)])
            meter = ContentMeter(row.size)
            meter.update(content)
            staged = StagedContent(meter.size, meter.sha256_hex, meter.sha1_b64, inline=content)
        else:
            meter = ContentMeter(row.size)
            async for _ in meter.hashed_pieces(self.store.get(row.blob_id)):
                pass
            staged = StagedContent(meter.size, meter.sha256_hex, meter.sha1_b64, blob_id=row.blob_id)
        if meter.size != row.size:
            raise Unprocessable(f"The uploaded object read back {meter.size} bytes but the upload declared "
                                f"{row.size}; it was removed and nothing was stored", code="invalid",
                                expression="size")
        if row.sha256 and meter.sha256_hex != row.sha256:
            raise Unprocessable(f"The SHA-256 of the uploaded bytes is {_b64_of_hex(meter.sha256_hex)}, not the "
                                "declared sha256; the object was removed and nothing was stored", code="invalid",
                                expression="sha256")
        return staged

    async def _join_parts(self, presigner: PresignedUploads, row: DirectUploadRow) -> None:
        """Join the uploaded parts into one object, once every part is there with its planned size."""
        assert row.multipart_id is not None and row.part_size is not None
        planned = _part_sizes(row.size, row.part_size)
        uploaded = await presigner.uploaded_parts(row.blob_id, row.multipart_id)
        if uploaded is None:
            if await presigner.stat(row.blob_id) is not None:
                return  # joined by an earlier completion that died before creating the Binary
            raise Unprocessable("The multipart upload is no longer in the object store; begin a new upload",
                                code="invalid")
        missing = [n for n in range(1, len(planned) + 1) if n not in uploaded]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise Conflict(f"Parts {shown} of {len(planned)} have not been uploaded yet; PUT them to their "
                           "URLs, then complete the upload again")
        wrong = [n for n, size in enumerate(planned, start=1) if uploaded[n] != size]
        if wrong or len(uploaded) != len(planned):
            raise Unprocessable(f"Parts {wrong or sorted(set(uploaded) - set(range(1, len(planned) + 1)))} do "
                                "not have their planned sizes; the upload was removed and nothing was stored",
                                code="invalid", expression="size")
        await presigner.join_parts(row.blob_id, row.multipart_id, list(range(1, len(planned) + 1)))

    async def _unclaim(self, upload_id: str) -> None:
        try:
            async with self.db.write() as conn:
                await self.rows.unclaim(conn, upload_id)
        except Exception:  # noqa: BLE001 - the claim then lapses after the grace period
            log.warning("could not release the claim on direct upload %s", upload_id, exc_info=True)

    # -- the sweeper ------------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Remove uploads past their expiry that were never completed (their objects, parts and pending
        blobs), and forget completed ones; returns how many uploads went. Does nothing outside s3 mode."""
        if self.presigner is None:
            return 0
        removed = 0
        while True:
            now = now_us()
            async with self.db.read() as conn:
                expired = await self.rows.expired(conn, now, now - self.grace_us)
            if not expired:
                return removed
            for row in expired:
                # Releases the blob only while it is still pending (never completed, or completed with the
                # content inline), removing the object and any unfinished multipart upload under its key;
                # the row goes with the blob row. A committed blob stays: it is the Binary's content.
                await self.binaries.discard_pending(row.blob_id)
                async with self.db.write() as conn:
                    await self.rows.remove(conn, row.id)
                removed += 1


def _client(ctx: RequestContext) -> Principal:
    """The calling client; direct uploads belong to one client, so the server's own authority has none."""
    if not isinstance(ctx.principal, Principal):
        raise Forbidden("Direct uploads are made by an authenticated client")
    return ctx.principal


def _part_sizes(size: int, part_size: int) -> list[int]:
    """The sizes of the parts of `size` bytes cut into parts of `part_size` (the last one shorter)."""
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest else [])


def _checked_content_type(value: str) -> str:
    try:
        return check_content_type(value, "contentType")
    except ValueError as exc:
        raise Invalid(str(exc), expression="contentType") from None


def _checked_reference(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return check_reference(value, "securityContext")
    except ValueError as exc:
        raise Invalid(str(exc), expression="securityContext") from None


def _sha256_hex(b64: str | None) -> str | None:
    """The hex form of a declared base64 SHA-256 digest; Invalid when it is not 32 bytes of strict base64."""
    if b64 is None:
        return None
    hex_digest = _digest_hex(b64)
    if hex_digest is None:
        raise Invalid("sha256 must be a 32-byte SHA-256 digest in base64", expression="sha256")
    return hex_digest


def _digest_hex(b64: str) -> str | None:
    """The hex form of a base64 SHA-256 digest the store reports; None when it is not one."""
    try:
        digest = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest.hex() if len(digest) == 32 else None


def _b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")

