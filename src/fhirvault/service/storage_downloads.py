"""Downloads through signed storage URLs: the signature is the authority, the signed version is served."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fhirvault.blobs.base import BlobStore
from fhirvault.security.principal import SYSTEM_SIGNED_URL
from fhirvault.security.url_signing import SignedUrl, StorageUrlParts
from fhirvault.service.binaries import BinaryContent, BinaryService
from fhirvault.service.context import RequestContext


class StorageDownloads:
    """Serving signed storage URLs: verifying them, the content they name, and object-store redirects."""

    def __init__(self, binaries: BinaryService, blob_store: BlobStore | None, signer: SignedUrl,
                 fhir_base_url: str) -> None:
        self.binaries = binaries
        self.blob_store = blob_store
        self.signer = signer
        # A signed URL carries its own authority: the server itself reads the content it names.
        self.trusted = RequestContext(base_url=fhir_base_url, principal=SYSTEM_SIGNED_URL)

    async def open(self, parts: StorageUrlParts) -> tuple[BinaryContent, int]:
        """The signed version's content and the seconds the URL has left; Forbidden (bad signature),
        Gone (expired), NotFound (the version was expunged)."""
        left = await self.signer.verify(parts)
        content = await self.binaries.content(self.trusted, parts.binary_id, parts.version_id)
        return content, left

    def stream(self, content: BinaryContent, start: int, end: int | None) -> AsyncIterator[bytes]:
        """The bytes [start, end) of the content (end None: to the end), in chunks."""
        return self.binaries.stream(content, start, end)

    async def redirect_url(self, content: BinaryContent, seconds_left: int, disposition: str | None) -> str | None:
        """The object store's own presigned URL of these bytes, living no longer than ours; None when the
        backend has none or the content is inline."""
        if self.blob_store is None or content.storage_key is None:
            return None
        return await self.blob_store.presigned_get_url(
            content.storage_key, expires_in=max(1, seconds_left), content_type=content.content_type,
            content_disposition=disposition)
