"""Binary content use cases: bytes streamed into blob storage and out again, hashed on the way in."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fhirvault.blobs.base import BlobStore
from fhirvault.clock import now_us
from fhirvault.errors import FhirVaultError, Invalid, NotFound, StorageFailure, TooLarge
from fhirvault.fhir.binary import (
    DEFAULT_CONTENT_TYPE,
    check_content_type,
    decode_base64_strict,
    filename_of,
    security_context_of,
    set_filename,
)
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.service.preconditions import Precondition
from fhirvault.service.resources import ResourceService, WriteResult
from fhirvault.store.blobs import RELEASED, BlobRegistry
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore, StoredResource
from fhirvault.streams import InOrderWorker, batches, one_chunk

log = logging.getLogger("fhirvault.binaries")

# Slices in which inline content is handed out, so even a large inline Binary streams.
INLINE_SLICE = 1024 * 1024
# Uploaded bytes are hashed in pieces of this size in a worker thread (hashlib lets go of the GIL), while
# the event loop receives the next piece and the store writes the last one: about one thread hop per
# piece, and memory bounded by a few pieces.
HASH_PIECE = 4 * 1024 * 1024


@dataclass(frozen=True)
class BinaryContent:
    """What is known about one version of a Binary's bytes, without the bytes."""

    binary_id: str
    version_id: int
    content_type: str
    size: int
    sha1_b64: str        # R4 Attachment.hash: base64 of the SHA-1 of the raw bytes
    sha256_hex: str      # the strong ETag is derived from this
    last_updated_us: int  # microseconds since the epoch (the version's lastUpdated)
    filename: str | None
    security_context: str | None   # e.g. "Patient/123"
    # Where the bytes are, when the description was made from the stored version (the version is
    # immutable, so streaming need not look it up again): the decoded inline content, or the blob's key.
    inline: bytes | None = field(default=None, repr=False)
    storage_key: str | None = None


class ContentMeter:
    """SHA-256, SHA-1 and size of the bytes passing through, refusing more than `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1()

    def update(self, chunk: bytes) -> None:
        """Counts and hashes one chunk; raises TooLarge once the total passes the limit."""
        self.count(chunk)
        self.hash(chunk)

    def count(self, chunk: bytes) -> None:
        """Adds the chunk's length; TooLarge past the limit (checked as the bytes arrive)."""
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"The content is over the limit of {self.limit} bytes (MAX_BINARY_BYTES)")

    def hash(self, chunk: bytes) -> None:
        """Feeds both digests; chunks must come in order. Safe to run in a worker thread."""
        self._sha256.update(chunk)
        self._sha1.update(chunk)

    def hash_batch(self, batch: list[bytes]) -> None:
        """`hash` of each chunk of the batch, in order (one thread hop for the lot)."""
        for chunk in batch:
            self.hash(chunk)

    async def hashed_pieces(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The chunks, unchanged and in order, counted (TooLarge as soon as the limit is passed) and hashed
        in a worker thread a batch of HASH_PIECE bytes at a time, while the consumer stores them and the
        next batch arrives. The digests are complete once the iterator is exhausted."""
        hasher: InOrderWorker[list[bytes]] = InOrderWorker(self.hash_batch)
        try:
            async for batch in batches(self._counted(chunks), HASH_PIECE):
                await hasher.submit(batch)
                for chunk in batch:
                    yield chunk
            await hasher.drain()
        finally:
            await hasher.settle()

    async def _counted(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.count(chunk)
            yield chunk

    @property
    def sha256_hex(self) -> str:
        """The SHA-256 of the bytes so far, in hex."""
        return self._sha256.hexdigest()

    @property
    def sha1_b64(self) -> str:
        """The SHA-1 of the bytes so far, base64 (as R4's Attachment.hash)."""
        return base64.b64encode(self._sha1.digest()).decode("ascii")


@dataclass
class StagedContent:
    """Bytes received and measured, not yet part of any resource: either small enough to stay inline in
    the resource, or in blob storage under a pending (or, when reused, an already committed) blob.
    Staging never looks at other content: whether equal content is already stored is decided only when
    the version commits (BlobRegistry.settle), after every byte was received, stored and hashed."""

    size: int
    sha256_hex: str
    sha1_b64: str
    inline: bytes | None = None
    blob_id: str | None = None
    reused: bool = False


# Work done inside a Binary's write transaction once its version is written.
AfterWrite = Callable[[UnitOfWork, WriteResult], Awaitable[None]]


def measure(data: bytes) -> ContentMeter:
    """A ContentMeter that has counted and hashed `data` (bytes already in memory)."""
    meter = ContentMeter(len(data))
    meter.update(data)
    return meter


class BinaryService:
    """Binary use cases: streaming content in (staged inline or into a pending blob, committed with the
    version) and out, sweeping leftovers of failed uploads, expunging. `rows` is the SQL of resources,
    used inside this service's own transactions; `store` None means inline mode. With `dedup`, content
    equal to a committed blob's refers to that blob and the upload's own copy is discarded."""

    def __init__(self, db: Database, resources: ResourceService, rows: ResourceStore, store: BlobStore | None,
                 registry: BlobRegistry, *, inline_max_bytes: int, max_binary_bytes: int,
                 pending_grace_seconds: int, dedup: bool = True, staging_store: BlobStore | None = None) -> None:
        self.dedup = dedup
        self._background: set[asyncio.Task[None]] = set()
        self.db = db
        self.resources = resources
        self.rows = rows
        self.store = store
        # Where the bytes of pending blobs live: the store, or in inline mode the store that stages
        # resumable uploads until their content goes into the resource (see service/uploads.py).
        self.staging_store = store if store is not None else staging_store
        self.registry = registry
        self.max_binary_bytes = max_binary_bytes
        # In inline mode every content stays in its resource, whatever its size.
        self.inline_limit = max_binary_bytes if store is None else inline_max_bytes
        self.pending_grace_us = pending_grace_seconds * 1_000_000

    # -- writes ---------------------------------------------------------------------------------
    async def create_from_stream(self, ctx: RequestContext, chunks: AsyncIterator[bytes], *,
                                 content_type: str, security_context: str | None = None,
                                 filename: str | None = None) -> WriteResult:
        """Creates a Binary from streamed bytes, as raw POST /Binary (R4 Binary; the bytes streamed, never
        held whole): staged, then committed with version 1 in one transaction. Raises TooLarge over
        MAX_BINARY_BYTES, StorageFailure when the store fails; nothing is left behind on failure."""
        return await self.write_from_stream(ctx, None, chunks, content_type=content_type,
                                            security_context=security_context, filename=filename)

    async def write_from_stream(self, ctx: RequestContext, rid: str | None, chunks: AsyncIterator[bytes], *,
                                content_type: str, security_context: str | None = None,
                                filename: str | None = None, if_match: Precondition | int | None = None) -> WriteResult:
        """Create (rid None) or update Binary `rid` with the streamed bytes as its content."""
        self.resources.require(ctx, "create" if rid is None else "update", "Binary")
        content_type = _content_type(content_type or DEFAULT_CONTENT_TYPE, "Content-Type")  # before any byte
        staged = await self.stage(chunks)
        return await self.write_staged(ctx, rid, staged, content_type=content_type,
                                       security_context=security_context, filename=filename, if_match=if_match)

    async def write_staged(self, ctx: RequestContext, rid: str | None, staged: StagedContent, *,
                           content_type: str, security_context: str | None = None,
                           filename: str | None = None, if_match: Precondition | int | None = None,
                           then: AfterWrite | None = None) -> WriteResult:
        """Create (rid None) or update Binary `rid` with content `stage` took in. Forbidden without Binary
        create/update scope, Invalid for a content type that is not a media type; on that or any other
        failure the staged blob is discarded. `then` runs inside the write transaction, after the
        version is written (a resumable upload records its Binary there)."""
        try:
            self.resources.require(ctx, "create" if rid is None else "update", "Binary")
            content_type = _content_type(content_type or DEFAULT_CONTENT_TYPE, "Content-Type")
        except BaseException:
            if staged.blob_id and not staged.reused:
                await self._discard(staged.blob_id)
            raise
        resource: dict[str, Any] = {"resourceType": "Binary", "contentType": content_type}
        if security_context:
            resource["securityContext"] = {"reference": security_context}
        set_filename(resource, filename)
        return await self._commit(ctx, rid, resource, staged, if_match, then)

    async def write_json(self, ctx: RequestContext, rid: str | None, body: dict[str, Any],
                         if_match: Precondition | int | None = None) -> WriteResult:
        """Create or update from a FHIR JSON Binary; an update without `data` keeps the current bytes
        (and their blob: a metadata-only change copies nothing)."""
        self.resources.require(ctx, "create" if rid is None else "update", "Binary")
        resource, raw = self._json_parts(body)
        if raw is not None:
            staged = await self.stage(one_chunk(raw))
        elif rid is not None:
            staged = await self._current_content(rid)
        else:
            staged = StagedContent(0, hashlib.sha256().hexdigest(), measure(b"").sha1_b64, inline=None)
        return await self._commit(ctx, rid, resource, staged, if_match)

    async def json_in(self, uow: UnitOfWork, ctx: RequestContext, body: dict[str, Any], *, rid: str | None,
                      update: bool, precondition: Precondition | None = None) -> WriteResult:
        """A FHIR JSON Binary written inside `uow` (an entry of a transaction or batch Bundle) by the rules of
        `write_json`: `data` above INLINE_MAX_BYTES goes to the blob store (stored inline it took the
        rows a third more than its bytes, and never reached the store), and an update (`update`, of `rid`)
        without `data` keeps the current bytes (it wrote a version with none). A create takes `rid` when
        given (an entry's assigned id). Raises Invalid for a missing or bad contentType or bad base64,
        TooLarge above MAX_BINARY_BYTES."""
        resource, raw = self._json_parts(body)
        blob_id: str | None = None
        if raw is not None:
            if len(raw) > self.inline_limit:
                blob_id = await self.store_in(uow, raw)
            else:
                resource["data"] = body["data"]
        elif update and rid is not None:
            current = await self.rows.get(uow.conn, "Binary", rid)
            if current is not None and not current.deleted and current.content is not None:
                if current.blob_id:
                    blob_id = current.blob_id
                elif "data" in current.content:
                    resource["data"] = current.content["data"]
        if update and rid is not None:
            return await self.resources.update_in(uow, ctx, "Binary", rid, {**resource, "id": rid}, precondition,
                                                  blob_id=blob_id)
        return await self.resources.create_in(uow, ctx, "Binary", resource, rid=rid, blob_id=blob_id,
                                              precondition=precondition)

    def _json_parts(self, body: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """A FHIR JSON Binary as (the resource without `data`, its checked contentType; the decoded bytes, or
        None without `data`). Raises Invalid for a missing or bad contentType or bad base64, TooLarge above
        MAX_BINARY_BYTES."""
        resource = dict(body)
        if not isinstance(resource.get("contentType"), str) or not resource["contentType"].strip():
            raise Invalid("A Binary needs a contentType", expression="Binary.contentType")
        resource["contentType"] = _content_type(resource["contentType"], "Binary.contentType")
        if "data" not in resource:
            return resource, None
        try:
            raw = decode_base64_strict(resource.pop("data"), "Binary.data")
        except ValueError as exc:
            raise Invalid(str(exc), expression="Binary.data") from None
        if len(raw) > self.max_binary_bytes:
            raise TooLarge(f"The content is over the limit of {self.max_binary_bytes} bytes (MAX_BINARY_BYTES)")
        return resource, raw

    async def store_in(self, uow: UnitOfWork, raw: bytes) -> str:
        """Puts `raw` into the blob store as part of `uow` and returns the id of the blob that holds it: this
        one, or with dedup an equal committed one (this copy then goes once `uow` commits). The bytes are
        stored whether or not equal content exists, as for a streamed upload: the time a write takes must
        not tell whether someone else stored the same content. Undone if `uow` rolls back."""
        store = self.store
        assert store is not None
        conn = uow.conn
        blob_id = uuid.uuid4().hex
        in_transaction = await store.put_in_transaction(conn, blob_id, raw)
        if not in_transaction:
            await store.put(blob_id, one_chunk(raw))
            uow.on_rollback.append(lambda: _delete_quietly(store, blob_id))
        meter = measure(raw)
        await self.registry.add_pending(conn, blob_id, store.name, blob_id, now_us())
        chosen = await self.registry.settle(conn, blob_id, meter.size, meter.sha256_hex, meter.sha1_b64,
                                            dedup=self.dedup)
        if chosen != blob_id:  # equal content is stored already: this copy goes
            if in_transaction and await store.delete_in_transaction(conn, blob_id):
                await self.registry.remove(conn, blob_id)
            else:
                uow.on_commit.append(lambda: self.remove_later(blob_id, blob_id))
        return chosen

    async def _current_content(self, rid: str) -> StagedContent:
        async with self.db.read() as conn:
            current = await self.rows.get(conn, "Binary", rid)
            if current is None or current.deleted or current.content is None:
                return StagedContent(0, "", "", inline=None)
            if current.blob_id:
                record = await self.registry.get(conn, current.blob_id)
                if record is not None and record.size is not None:
                    return StagedContent(record.size, record.sha256 or "", record.sha1 or "",
                                         blob_id=record.id, reused=True)
        data = current.content.get("data")
        raw = decode_base64_strict(data, "Binary.data") if isinstance(data, str) else b""
        meter = measure(raw)
        return StagedContent(meter.size, meter.sha256_hex, meter.sha1_b64, inline=raw if data else None)

    async def stage(self, chunks: AsyncIterator[bytes]) -> StagedContent:
        """Take in the bytes: keep them when small, else stream them into a pending blob. On any failure
        (client gone, over the limit, storage error) nothing of them is left."""
        meter = ContentMeter(self.max_binary_bytes)
        iterator = aiter(chunks)
        head = bytearray()
        while len(head) <= self.inline_limit:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return StagedContent(meter.size, meter.sha256_hex, meter.sha1_b64, inline=bytes(head))
            meter.update(chunk)
            head += chunk
        assert self.store is not None  # inline mode never gets here: its limit is the content limit
        store = self.store

        async def everything() -> AsyncIterator[bytes]:
            yield bytes(head)
            head.clear()
            async for piece in meter.hashed_pieces(iterator):
                yield piece

        blob_id = uuid.uuid4().hex
        async with self.db.write() as conn:
            await self.registry.add_pending(conn, blob_id, store.name, blob_id, now_us())
        try:
            await store.put(blob_id, everything())
        except BaseException:
            await self._discard(blob_id)
            raise
        return StagedContent(meter.size, meter.sha256_hex, meter.sha1_b64, blob_id=blob_id)

    async def _commit(self, ctx: RequestContext, rid: str | None, resource: dict[str, Any],
                      staged: StagedContent, if_match: Precondition | int | None,
                      then: AfterWrite | None = None) -> WriteResult:
        resource.pop("data", None)
        if staged.inline:
            resource["data"] = base64.b64encode(staged.inline).decode("ascii")
        own_blob = staged.blob_id if staged.blob_id and not staged.reused else None
        chosen: list[str | None] = [staged.blob_id]

        async def work(uow: UnitOfWork) -> WriteResult:
            blob_id = staged.blob_id
            if own_blob is not None:
                try:
                    blob_id = await self.registry.settle(uow.conn, own_blob, staged.size, staged.sha256_hex,
                                                         staged.sha1_b64, dedup=self.dedup)
                except LookupError:
                    raise StorageFailure("The upload took longer than the pending blob grace period; retry") \
                        from None
            chosen[0] = blob_id
            if rid is None:
                result = await self.resources.create_in(uow, ctx, "Binary", resource, blob_id=blob_id)
            else:
                body = {**resource, "id": rid}
                result = await self.resources.update_in(uow, ctx, "Binary", rid, body, if_match, blob_id=blob_id)
            if then is not None:
                await then(uow, result)
            return result

        try:
            result = await self.resources.in_transaction(ctx, work)
        except BaseException:
            if own_blob is not None:
                await self._discard(own_blob)
            raise
        if own_blob is not None and chosen[0] != own_blob:
            # Equal content was already stored: this upload's copy was released with the commit. Its bytes
            # go in the background, so that the answer to a duplicate leaves as soon as the answer to new
            # content would (what someone else stored must not show in the uploader's timing); a crash
            # before they are gone leaves a released row the sweeper finishes.
            self.remove_later(own_blob, own_blob)
        return result

    def remove_later(self, blob_id: str, storage_key: str) -> None:
        """Remove the bytes and row of a released blob in a background task (errors logged: the sweeper
        retries released blobs)."""
        async def remove() -> None:
            try:
                await self._remove_blob(blob_id, storage_key)
            except Exception:
                log.warning("could not remove released blob %s now; the sweeper will", blob_id, exc_info=True)

        task = asyncio.get_running_loop().create_task(remove())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settled(self) -> None:
        """Wait for the background removals started so far (used before the event loop ends)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def discard_pending(self, blob_id: str) -> None:
        """Release a pending blob (one whose bytes arrived outside `stage`, e.g. a direct upload) and remove
        its bytes and row now; a committed blob is left alone. What fails here is left to the sweeper."""
        await self._discard(blob_id)

    async def _discard(self, blob_id: str) -> None:
        """Release this request's pending blob and remove its bytes; a blob committed meanwhile (the
        failure came after the commit) keeps them. What fails here is left to the sweeper."""
        try:
            await asyncio.shield(self._reclaim(blob_id, blob_id, created_before=None))
        except Exception:
            log.warning("could not remove pending blob %s now; the sweeper will", blob_id, exc_info=True)

    async def _reclaim(self, blob_id: str, storage_key: str, created_before: int | None) -> bool:
        """Claim a pending blob (pending -> released, in one conditional UPDATE, so that an upload
        committing at the same moment and this can never both succeed), then remove its bytes and row.
        False when it was no longer pending."""
        async with self.db.write() as conn:
            if not await self.registry.release_pending(conn, blob_id, created_before):
                return False
        await self._remove_blob(blob_id, storage_key)
        return True

    async def _remove_blob(self, blob_id: str, storage_key: str) -> None:
        """Bytes first, then the row of a released blob: a crash in between leaves a row the sweeper finds."""
        if self.staging_store is not None:
            await self.staging_store.delete(storage_key)
        async with self.db.write() as conn:
            await self.registry.remove(conn, blob_id)

    async def sweep(self) -> int:
        """Remove released blobs and pending ones older than the grace period (leftovers of uploads that
        died); returns how many. A pending blob an upload commits meanwhile is left alone."""
        removed = 0
        skipped: set[str] = set()  # tried in this pass; one blob the store refuses must not block the rest
        cutoff = now_us() - self.pending_grace_us
        while True:
            async with self.db.read() as conn:
                stale = await self.registry.sweepable(conn, cutoff, excluding=frozenset(skipped))
            if not stale:
                return removed
            for record in stale:
                try:
                    if record.state == RELEASED:
                        await self._remove_blob(record.id, record.storage_key)
                    elif not await self._reclaim(record.id, record.storage_key, created_before=cutoff):
                        skipped.add(record.id)
                        continue
                    removed += 1
                except Exception as exc:  # noqa: BLE001 - logged; the next sweep tries again
                    skipped.add(record.id)
                    log.warning("could not remove blob %s (%s); will retry", record.id, exc)

    async def sweep_leftovers(self) -> int:
        """Remove what the blob store holds under keys no blob row owns and that are older than the grace
        period: pieces of writes whose process died before any row owned them, or leftovers of older
        versions. Returns how many keys were removed."""
        if self.store is None:
            return 0
        changed_before = now_us() / 1_000_000 - self.pending_grace_us / 1_000_000
        removed = 0
        batch: list[str] = []
        async for key in self.store.stored_keys(changed_before):
            batch.append(key)
            if len(batch) >= 500:
                removed += await self._remove_ownerless(batch)
                batch = []
        return removed + await self._remove_ownerless(batch)

    async def _remove_ownerless(self, keys: list[str]) -> int:
        assert self.store is not None
        async with self.db.read() as conn:
            owned = await self.registry.owned_keys(conn, keys)
        removed = 0
        for key in sorted(set(keys) - owned):
            try:
                await self.store.delete(key)
                removed += 1
            except Exception as exc:  # noqa: BLE001 - logged; the next sweep tries again
                log.warning("could not remove ownerless blob bytes %s (%s); will retry", key, exc)
        return removed

    # -- reads ----------------------------------------------------------------------------------
    async def content(self, ctx: RequestContext, binary_id: str, version_id: int | None = None) -> BinaryContent:
        """Access-checked (securityContext) description of the current or given version;
        NotFound / Gone as for a read."""
        if version_id is None:
            stored = await self.resources.read(ctx, "Binary", binary_id)
        else:
            stored = await self.resources.vread(ctx, "Binary", binary_id, str(version_id))
        return await self.describe(stored)

    async def describe(self, stored: StoredResource) -> BinaryContent:
        """The content description of a stored Binary version the caller may already see."""
        if stored.resource_type != "Binary":
            raise NotFound(f"{stored.resource_type}/{stored.id} is not a Binary")
        resource = stored.content or {}
        inline: bytes | None = None
        storage_key: str | None = None
        if stored.blob_id:
            async with self.db.read() as conn:
                record = await self.registry.get(conn, stored.blob_id)
            if record is None or record.size is None:
                raise StorageFailure(f"The content of Binary/{stored.id} is missing from the blob registry")
            size, sha256_hex, sha1_b64 = record.size, record.sha256 or "", record.sha1 or ""
            storage_key = record.storage_key
        else:
            inline = _inline_bytes(stored)
            meter = measure(inline)
            size, sha256_hex, sha1_b64 = meter.size, meter.sha256_hex, meter.sha1_b64
        return BinaryContent(
            binary_id=stored.id, version_id=stored.version_id,
            content_type=str(resource.get("contentType") or DEFAULT_CONTENT_TYPE),
            size=size, sha1_b64=sha1_b64, sha256_hex=sha256_hex, last_updated_us=stored.last_updated,
            filename=filename_of(resource), security_context=security_context_of(resource),
            inline=inline, storage_key=storage_key,
        )

    def stream(self, content: BinaryContent, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) of that version, in chunks, whatever the storage mode."""
        if content.inline is not None:
            return _slices(content.inline, start, end)
        if content.storage_key is not None and self.store is not None:
            return self.store.get(content.storage_key, start, end)
        return self._stream(content.binary_id, content.version_id, start, end)

    async def _stream(self, binary_id: str, version_id: int, start: int, end: int | None) -> AsyncIterator[bytes]:
        async with self.db.read() as conn:
            stored = await self.rows.get_version(conn, "Binary", binary_id, version_id)
            record = await self.registry.get(conn, stored.blob_id) if stored and stored.blob_id else None
        if stored is None:
            raise NotFound(f"Binary/{binary_id} has no version {version_id}")
        if stored.blob_id:
            if record is None or self.store is None:
                raise StorageFailure(f"The content of Binary/{binary_id} is not in the configured storage")
            async for chunk in self.store.get(record.storage_key, start, end):
                yield chunk
            return
        async for piece in _slices(_inline_bytes(stored), start, end):
            yield piece

    # -- expunge --------------------------------------------------------------------------------
    async def expunge(self, rtype: str, rid: str) -> int:
        """Remove every version of a resource, and the bytes of the blobs no other version refers to any
        more (shared content stays for the others); returns how many versions went."""
        async with self.db.write() as conn:
            versions = await self.rows.versions_of(conn, rtype, rid)
            # Released in the same transaction: a crash before the bytes go leaves rows the sweeper finds.
            released = await self.rows.expunge(conn, rtype, rid)
        for record in released:
            try:
                await self._remove_blob(record.id, record.storage_key)
            except FhirVaultError:
                log.warning("could not remove the bytes of expunged blob %s; the sweeper will", record.id,
                            exc_info=True)
        return len(versions)


async def _slices(data: bytes, start: int, end: int | None) -> AsyncIterator[bytes]:
    stop = len(data) if end is None else min(end, len(data))
    for offset in range(start, stop, INLINE_SLICE):
        yield data[offset:min(offset + INLINE_SLICE, stop)]


def _inline_bytes(stored: StoredResource) -> bytes:
    data = (stored.content or {}).get("data")
    if not isinstance(data, str):
        return b""
    try:
        return decode_base64_strict(data, "Binary.data")
    except ValueError as exc:
        raise StorageFailure(f"The stored data of Binary/{stored.id} is damaged: {exc}") from None


def _content_type(value: str, where: str) -> str:
    """The media type a Binary is stored with; Invalid when it could not be served as a header again."""
    try:
        return check_content_type(value, where)
    except ValueError as exc:
        raise Invalid(str(exc), expression="Binary.contentType") from None


async def _delete_quietly(store: BlobStore, key: str) -> None:
    try:
        await store.delete(key)
    except Exception:
        log.warning("could not remove blob %s of a rolled back write", key, exc_info=True)
