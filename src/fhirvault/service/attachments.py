"""Attachment URLs: normalized to `Binary/{id}` on write, rewritten to signed storage URLs on read."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.errors import FhirVaultError, Invalid
from fhirvault.fhir.attachments import attachment_objects, iter_attachments
from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, decode_base64_strict
from fhirvault.fhir.r4 import ID
from fhirvault.security.url_signing import SignedUrl
from fhirvault.service.access import AccessPolicy
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.store.binary_rows import BinaryRow, current_binaries
from fhirvault.store.database import Database

_BINARY_REF = re.compile(rf"^Binary/({ID})(?:/_history/([0-9]+))?$")
_STORED_REF = re.compile(rf"^Binary/({ID})$")


async def may_read(access: AccessPolicy, ctx: RequestContext, conn: AsyncConnection,
                   binary: dict[str, Any]) -> bool:
    """Whether the caller may read this Binary (its securityContext rules)."""
    return await access.can_see(ctx, conn, binary, "read")


@dataclass
class UrlShapes:
    """Recognises the URLs that name one of our Binaries."""

    fhir_base_url: str
    signer: SignedUrl

    async def binary_id(self, url: str, where: str) -> str | None:
        """The Binary id `url` names (`Binary/{id}`, `Binary/{id}/_history/{vid}`, `{base}/Binary/{id}`,
        one of our signed storage URLs, even expired), or None for any other URL. A storage URL of ours
        whose signature is wrong is refused: it names nothing we handed out."""
        relative = url[len(self.fhir_base_url) + 1:] if url.startswith(self.fhir_base_url + "/") else url
        m = _BINARY_REF.match(relative)
        if m:
            return m.group(1)
        parts = self.signer.parse(url)
        if parts is None:
            return None
        try:
            await self.signer.verify(parts, allow_expired=True)
        except FhirVaultError:
            raise Invalid(f"{where} is a storage URL of this server with a signature that is not valid",
                          expression=where) from None
        return parts.binary_id


@dataclass(frozen=True)
class BinaryMeasures:
    content_type: str
    size: int
    sha1_b64: str


def measures_of(row: BinaryRow) -> BinaryMeasures:
    content_type = str(row.resource.get("contentType") or DEFAULT_CONTENT_TYPE)
    if row.blob_size is not None and row.blob_sha1 is not None:
        return BinaryMeasures(content_type, row.blob_size, row.blob_sha1)
    data = row.resource.get("data")
    try:
        raw = decode_base64_strict(data, "Binary.data") if isinstance(data, str) else b""
    except ValueError:
        raw = b""
    return BinaryMeasures(content_type, len(raw), base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii"))


class AttachmentNormalizer:
    """WriteStep (`WritePipeline.normalize_attachment_urls`): every Attachment url naming one of our Binaries
    becomes `Binary/{id}`; the Binary must exist (and be readable by the writer); size, hash and contentType are
    filled from it when absent and must agree with it when present."""

    def __init__(self, access: AccessPolicy, shapes: UrlShapes) -> None:
        self.access = access
        self.shapes = shapes

    async def before_write(self, ctx: RequestContext, uow: UnitOfWork, resource: dict[str, Any]) -> None:
        conn = uow.conn
        if resource.get("resourceType") == "Binary":
            return
        named: list[tuple[str, dict[str, Any], str]] = []
        for path, attachment in iter_attachments(resource):
            url = attachment.get("url")
            if isinstance(url, str):
                binary_id = await self.shapes.binary_id(url, f"{path}.url")
                if binary_id is not None:
                    named.append((path, attachment, binary_id))
        if not named:
            return
        rows = await current_binaries(conn, {b for _, _, b in named}, with_blobs=True)
        readable = {bid: row for bid, row in rows.items() if await may_read(self.access, ctx, conn, row.resource)}
        for path, attachment, binary_id in named:
            row = readable.get(binary_id)
            if row is None:
                raise Invalid(f"{path}.url names Binary/{binary_id}, which does not exist", expression=f"{path}.url")
            attachment["url"] = f"Binary/{binary_id}"
            _fill_from(path, attachment, binary_id, measures_of(row))


def _fill_from(path: str, attachment: dict[str, Any], binary_id: str, m: BinaryMeasures) -> None:
    if "contentType" not in attachment:
        attachment["contentType"] = m.content_type
    if "size" not in attachment:
        attachment["size"] = m.size
    elif attachment["size"] != m.size:
        raise Invalid(f"{path}.size is {attachment['size']!r} but Binary/{binary_id} holds {m.size} bytes",
                      expression=f"{path}.size")
    if "hash" not in attachment:
        attachment["hash"] = m.sha1_b64
    elif attachment["hash"] != m.sha1_b64:
        raise Invalid(f"{path}.hash is {attachment['hash']!r} but the SHA-1 of Binary/{binary_id} is "
                      f"{m.sha1_b64}", expression=f"{path}.hash")


class AttachmentUrlSigner:
    """ReadStep (`ReadPipeline.sign_attachment_urls`): each `Binary/{id}` Attachment url the caller may read
    becomes a signed storage URL of that Binary's current version; others stay as they are. One query per batch
    of resources."""

    def __init__(self, db: Database, access: AccessPolicy, signer: SignedUrl) -> None:
        self.db = db
        self.access = access
        self.signer = signer

    async def after_read(self, ctx: RequestContext, resources: list[dict[str, Any]]) -> None:
        targets: list[tuple[dict[str, Any], str]] = []
        for resource in resources:
            for attachment in attachment_objects(resource):
                url = attachment.get("url")
                if isinstance(url, str) and url.startswith("Binary/"):
                    m = _STORED_REF.match(url)
                    if m:
                        targets.append((attachment, m.group(1)))
        if not targets:
            return
        access = self.access
        try:
            access.require(ctx, "read", "Binary")
        except FhirVaultError:
            return  # no Binary scope: every url stays `Binary/{id}`
        async with self.db.read() as conn:
            rows = await current_binaries(conn, {b for _, b in targets}, access_fields_only=True)
            versions = {bid: row.version_id for bid, row in rows.items()
                        if await may_read(access, ctx, conn, row.resource)}
        if not versions:
            return
        key = await self.signer.signing_key()
        minted: dict[str, str] = {}
        for attachment, binary_id in targets:
            version = versions.get(binary_id)
            if version is None:
                continue
            if binary_id not in minted:
                minted[binary_id] = self.signer.mint_with(key, binary_id, version)
            attachment["url"] = minted[binary_id]
