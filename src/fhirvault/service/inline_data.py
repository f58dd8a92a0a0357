"""The INLINE_MAX_BYTES rule on write: base64 `data` above it in any Attachment moves out into a Binary."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from fhirvault.blobs.base import BlobStore
from fhirvault.clock import now_us
from fhirvault.errors import Invalid
from fhirvault.fhir.attachments import iter_attachments
from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, decode_base64_strict
from fhirvault.service.attachments import BinaryMeasures, check_measures
from fhirvault.service.binaries import measure
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.service.resources import ResourceService
from fhirvault.store.blobs import BlobRegistry
from fhirvault.streams import one_chunk

log = logging.getLogger("fhirvault.binaries")


class InlineDataMover:
    """WriteStep (`WritePipeline.move_inline_data`). Checks that every `Binary.data` and `Attachment.data` is
    strict base64 (400 otherwise) and that an Attachment's `size` and `hash` agree with its `data` (400
    naming the element; missing ones are filled in, as for url-based Attachments), and moves Attachment
    content larger than INLINE_MAX_BYTES into a new Binary (securityContext: the resource) inside the same
    transaction, leaving `url: Binary/{id}`, size, hash, contentType and title."""

    def __init__(self, resources: ResourceService, store: BlobStore | None, registry: BlobRegistry,
                 inline_max_bytes: int, *, dedup: bool = True,
                 remove_later: Callable[[str, str], None] | None = None) -> None:
        self.dedup = dedup
        self.remove_later = remove_later
        self.resources = resources
        self.store = store
        self.registry = registry
        self.inline_max_bytes = inline_max_bytes

    async def before_write(self, ctx: RequestContext, uow: UnitOfWork, resource: dict[str, Any]) -> None:
        """WriteStep: checks the base64, size and hash of inline data and moves large Attachment data into
        Binaries (see the class)."""
        rtype = resource.get("resourceType")
        if rtype == "Binary":
            if "data" in resource:
                _decoded(resource["data"], "Binary.data")
            return
        # Every data element is checked before any is moved out: a refused write stores no bytes.
        large = []
        for path, attachment in list(iter_attachments(resource)):
            if "data" not in attachment:
                continue
            raw = _decoded(attachment["data"], f"{path}.data")
            meter = measure(raw)
            check_measures(path, attachment, "its data", BinaryMeasures(None, meter.size, meter.sha1_b64))
            if self.store is not None and len(raw) > self.inline_max_bytes:
                large.append((attachment, raw))
        for attachment, raw in large:
            binary_id = await self._move_out(ctx, uow, raw, attachment, f"{rtype}/{resource.get('id')}")
            del attachment["data"]
            attachment["url"] = f"Binary/{binary_id}"

    async def _move_out(self, ctx: RequestContext, uow: UnitOfWork, raw: bytes,
                        attachment: dict[str, Any], owner: str) -> str:
        store = self.store
        assert store is not None
        conn = uow.conn
        blob_id = uuid.uuid4().hex
        # The bytes are stored whether or not equal content exists, as for a streamed upload: the time a
        # write takes must not tell whether someone else stored the same content.
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
            elif self.remove_later is not None:
                remove_later = self.remove_later
                uow.on_commit.append(lambda: remove_later(blob_id, blob_id))
        binary = {"resourceType": "Binary",
                  "contentType": attachment.get("contentType") or DEFAULT_CONTENT_TYPE,
                  "securityContext": {"reference": owner}}
        result = await self.resources.create_in(uow, ctx, "Binary", binary, blob_id=chosen)
        return result.stored.id


def _decoded(value: Any, where: str) -> bytes:
    try:
        return decode_base64_strict(value, where)
    except ValueError as exc:
        raise Invalid(str(exc), expression=where) from None


async def _delete_quietly(store: BlobStore, key: str) -> None:
    try:
        await store.delete(key)
    except Exception:
        log.warning("could not remove blob %s of a rolled back write", key, exc_info=True)

