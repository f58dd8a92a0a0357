"""The INLINE_MAX_BYTES rule on write: base64 `data` above it in any Attachment moves out into a Binary."""

from __future__ import annotations

from typing import Any

from fhirvault.errors import Invalid
from fhirvault.fhir.attachments import iter_attachments
from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, decode_base64_strict
from fhirvault.service.attachments import BinaryMeasures, check_measures
from fhirvault.service.binaries import BinaryService, measure
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.service.resources import ResourceService


class InlineDataMover:
    """WriteStep (`WritePipeline.move_inline_data`). Checks that every `Binary.data` and `Attachment.data` is
    strict base64 (400 otherwise) and that an Attachment's `size` and `hash` agree with its `data` (400
    naming the element; missing ones are filled in, as for url-based Attachments), and moves Attachment
    content larger than INLINE_MAX_BYTES into a new Binary (securityContext: the resource) inside the same
    transaction, leaving `url: Binary/{id}`, size, hash, contentType and title."""

    def __init__(self, resources: ResourceService, binaries: BinaryService, inline_max_bytes: int) -> None:
        """`binaries` stores the moved bytes (BinaryService.store_in); None of it in inline mode (no store)."""
        self.resources = resources
        self.binaries = binaries
        self.store = binaries.store
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
        chosen = await self.binaries.store_in(uow, raw)
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
