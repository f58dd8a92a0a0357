"""$binary-access-read / $binary-access-write: the bytes of the Attachment at a FHIRPath `path` in any resource."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fhirvault.errors import Invalid, NotFound
from fhirvault.fhir.attachments import attachment_objects
from fhirvault.fhir.binary import (
    DEFAULT_CONTENT_TYPE,
    check_content_type,
    decode_base64_strict,
    filename_of,
    security_context_of,
)
from fhirvault.fhir.element_path import ElementPath, PathError, parse_element_path, resolve_first
from fhirvault.fhir.r4 import whole_number
from fhirvault.fhir.validation import attachment_size
from fhirvault.service.attachments import binary_reference
from fhirvault.service.binaries import BinaryContent, BinaryService, measure
from fhirvault.service.context import RequestContext
from fhirvault.service.preconditions import Precondition, as_precondition
from fhirvault.service.resources import ResourceService, WriteResult
from fhirvault.store.resources import StoredResource
from fhirvault.streams import one_chunk

ByteStream = Callable[[int, int | None], AsyncIterator[bytes]]


@dataclass(frozen=True)
class ReadableContent:
    """Bytes ready to be served: their description and a way to stream any range of them."""

    content: BinaryContent
    stream: ByteStream


def _parse_path(rtype: str, path_text: str | None) -> ElementPath:
    if not path_text:
        raise Invalid(f"The 'path' parameter is required on {rtype} (e.g. {rtype}.content.attachment)",
                      expression="path")
    try:
        path = parse_element_path(path_text)
    except PathError as exc:
        raise Invalid(f"path '{path_text}' does not parse: {exc}", expression="path") from None
    if path.resource_type != rtype:
        raise Invalid(f"path '{path_text}' must start with the resource type {rtype}", expression="path")
    if not path.steps:
        raise Invalid(f"path '{path_text}' names the whole {rtype}, not an Attachment in it", expression="path")
    return path


def _attachment_at(resource: dict[str, Any], path: ElementPath) -> dict[str, Any]:
    target = resolve_first(resource, path)
    if target is None:
        raise Invalid(f"path '{path}' matches nothing in {resource['resourceType']}/{resource.get('id')}",
                      expression="path")
    # The typed walk decides what is an Attachment; identity ties its answer to the selected element.
    if not isinstance(target, dict) or not any(a is target for a in attachment_objects(resource)):
        raise Invalid(f"path '{path}' selects an element that is not an Attachment", expression="path")
    return target


def _is_binary_itself(rtype: str, path_text: str | None) -> bool:
    return rtype == "Binary" and (not path_text or path_text.strip() == "Binary")


class BinaryAccess:
    """$binary-access-read and $binary-access-write (HAPI FHIR's operations): the bytes of the Attachment at
    an element path of a resource, or of a Binary itself."""

    def __init__(self, resources: ResourceService, binaries: BinaryService) -> None:
        self.resources = resources
        self.binaries = binaries

    # -- read -----------------------------------------------------------------------------------
    async def read(self, ctx: RequestContext, rtype: str, rid: str, vid: str | None, path_text: str | None
                   ) -> ReadableContent:
        """The bytes the Attachment at `path_text` of [rtype]/[rid] (version `vid`, else the current) refers
        to, or a Binary's own bytes; checks read rights on the resource and on the Binary. Raises
        NotFound for a missing resource, element or Binary, Invalid for a bad path."""
        if _is_binary_itself(rtype, path_text):
            version = whole_number(vid) if vid else None
            if vid and version is None:
                raise NotFound(f"Binary/{rid} has no version '{vid}'")
            content = await self.binaries.content(ctx, rid, version)
            return ReadableContent(content, lambda s, e: self.binaries.stream(content, s, e))
        path = _parse_path(rtype, path_text)
        stored = await (self.resources.vread(ctx, rtype, rid, vid) if vid else self.resources.read(ctx, rtype, rid))
        assert stored.content is not None
        attachment = _attachment_at(stored.content, path)
        return await self._attachment_content(ctx, stored, path, attachment)

    async def _attachment_content(self, ctx: RequestContext, stored: StoredResource, path: ElementPath,
                                  attachment: dict[str, Any]) -> ReadableContent:
        declared_type = attachment.get("contentType")
        if "data" in attachment:
            try:
                raw = decode_base64_strict(attachment["data"], f"{path}.data")
            except ValueError as exc:
                raise Invalid(str(exc)) from None
            meter = measure(raw)
            content = BinaryContent(
                binary_id=f"{stored.resource_type}/{stored.id}", version_id=stored.version_id,
                content_type=str(declared_type or DEFAULT_CONTENT_TYPE), size=meter.size,
                sha1_b64=meter.sha1_b64, sha256_hex=meter.sha256_hex, last_updated_us=stored.last_updated,
                filename=None, security_context=None)
            return ReadableContent(content, lambda s, e: one_chunk(raw[s:e]))
        url = attachment.get("url")
        ref = binary_reference(url, "") if isinstance(url, str) else None
        if ref is not None:
            # The version the Attachment names, else the current one; access as for a (v)read of it.
            content = await self.binaries.content(ctx, ref.id, int(ref.version_id) if ref.version_id else None)
            if declared_type:
                content = dataclasses.replace(content, content_type=str(declared_type))
            return ReadableContent(content, lambda s, e: self.binaries.stream(content, s, e))
        if isinstance(url, str) and url:
            raise Invalid(f"The Attachment at '{path}' points at {url!r}, which is not content stored here "
                          "(yet: an external URL is fetched by an ingestion job)", expression="path")
        raise Invalid(f"The Attachment at '{path}' has no content (neither data nor url)", expression="path")

    # -- write ----------------------------------------------------------------------------------
    async def write(self, ctx: RequestContext, rtype: str, rid: str, path_text: str | None,
                    chunks: AsyncIterator[bytes], content_type: str,
                    if_match: Precondition | int | None) -> WriteResult:
        """Streams the bytes into a new Binary and points the Attachment at `path_text` of [rtype]/[rid] at it
        (size, hash, contentType filled in) in a new version of the resource, or writes a new
        version of a Binary itself; `if_match` is the write precondition. Needs update rights;
        nothing is stored when any step fails."""
        self.resources.require(ctx, "update", rtype)
        try:
            content_type = check_content_type(content_type, "Content-Type")
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if _is_binary_itself(rtype, path_text):
            current = await self.resources.read(ctx, "Binary", rid)
            assert current.content is not None
            return await self.binaries.write_from_stream(
                ctx, rid, chunks, content_type=content_type, if_match=if_match,
                security_context=security_context_of(current.content), filename=filename_of(current.content))
        path = _parse_path(rtype, path_text)
        current = await self.resources.read(ctx, rtype, rid)
        assert current.content is not None
        precondition = as_precondition(if_match)
        if precondition is not None:
            precondition.check(rtype, rid, current)  # refuse before any byte is stored
        _attachment_at(current.content, path)  # refuse before any byte is stored
        new_fields, new_binary = await self._store_bytes(ctx, rtype, rid, chunks, content_type)
        try:
            return await self._apply(ctx, rtype, rid, path, new_fields, if_match)
        except BaseException:
            await self.binaries.expunge("Binary", new_binary)  # nothing left over from a failed write
            raise

    async def _store_bytes(self, ctx: RequestContext, rtype: str, rid: str, chunks: AsyncIterator[bytes],
                           content_type: str) -> tuple[dict[str, Any], str]:
        """A new Binary whose securityContext is the resource, whatever the size: the caller chose the
        binary path, and browser clients need the Attachment's `url` (INLINE_MAX_BYTES governs base64 that
        arrives inside JSON, and whether the new Binary keeps its bytes inline). Returns the Attachment
        elements to set and the new Binary's id."""
        staged = await self.binaries.stage(chunks)
        result = await self.binaries.write_staged(ctx, None, staged, content_type=content_type,
                                                  security_context=f"{rtype}/{rid}")
        return ({"contentType": content_type, "url": f"Binary/{result.stored.id}", **attachment_size(staged.size),
                 "hash": staged.sha1_b64}, result.stored.id)

    async def _apply(self, ctx: RequestContext, rtype: str, rid: str, path: ElementPath,
                     fields: dict[str, Any], if_match: Precondition | int | None) -> WriteResult:
        """Set the new content on the attachment of the current version; a concurrent edit elsewhere in the
        resource is re-read and kept (unless the client pinned a version with If-Match)."""
        def change(resource: dict[str, Any]) -> bool:
            attachment = _attachment_at(resource, path)
            attachment.pop("data", None)
            attachment.update(fields)
            return True

        result = await self.resources.modify(ctx, rtype, rid, change, if_match)
        assert result is not None
        return result
