"""Attachment URLs: normalized to `Binary/{id}` on write, rewritten to signed storage URLs on read."""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.errors import FhirVaultError, Invalid
from fhirvault.fhir.attachments import Site, at_site, attachment_sites, iter_attachments
from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, decode_base64_strict
from fhirvault.fhir.references import Reference, parse_reference
from fhirvault.fhir.validation import attachment_size
from fhirvault.security.url_signing import SignedUrl
from fhirvault.service.access import AccessPolicy
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.store.binary_rows import BinaryRow, binary_versions, current_binaries, current_versions
from fhirvault.store.database import Database


@functools.lru_cache(maxsize=8192)
def binary_reference(url: str, fhir_base_url: str) -> Reference | None:
    """`Binary/{id}` or `Binary/{id}/_history/{vid}`, relative or on our FHIR base; None otherwise.
    Remembered for the most recent URLs: every read of a resource with attachments parses them again."""
    ref = parse_reference(url, fhir_base_url)
    if ref is None or ref.resource_type != "Binary":
        return None
    return Reference("Binary", ref.id, str(int(ref.version_id)) if ref.version_id else None)


def stored_form(ref: Reference) -> str:
    """How an Attachment url naming `ref` is stored: `Binary/{id}`, or `Binary/{id}/_history/{vid}` when
    the writer named a version (that version is then the content, not whatever is current)."""
    return f"{ref.relative}/_history/{ref.version_id}" if ref.version_id else ref.relative


@dataclass
class UrlShapes:
    """Recognises the URLs that name one of our Binaries."""

    fhir_base_url: str
    signer: SignedUrl

    async def binary_ref(self, url: str, where: str) -> Reference | None:
        """The Binary (and version, when one is named) that `url` names: `Binary/{id}`,
        `Binary/{id}/_history/{vid}`, either on our FHIR base, or one of our signed storage URLs, even
        expired (its version only when it was minted for a versioned reference); None for any other
        URL. A storage URL of ours whose signature is wrong is refused: it names nothing we handed out."""
        ref = binary_reference(url, self.fhir_base_url)
        if ref is not None:
            return ref
        parts = self.signer.parse(url)
        if parts is None:
            return None
        try:
            await self.signer.verify(parts, allow_expired=True)
        except FhirVaultError:
            raise Invalid(f"{where} is a storage URL of this server with a signature that is not valid",
                          expression=where) from None
        return Reference("Binary", parts.binary_id, str(parts.version_id) if parts.pinned else None)


@dataclass(frozen=True)
class BinaryMeasures:
    """What an Attachment pointing at a Binary is filled in with: the Binary's contentType, its size in bytes
    and its SHA-1 (base64)."""

    content_type: str | None  # None: nothing to fill in (an Attachment's own data has no other type)
    size: int
    sha1_b64: str


def measures_of(row: BinaryRow) -> BinaryMeasures:
    """The measures of a Binary row: from its blob when the content is in blob storage, else from its inline
    data."""
    content_type = str(row.resource.get("contentType") or DEFAULT_CONTENT_TYPE)
    if row.blob_size is not None and row.blob_sha1 is not None:
        return BinaryMeasures(content_type, row.blob_size, row.blob_sha1)
    data = row.resource.get("data")
    try:
        raw = decode_base64_strict(data, "Binary.data")
    except ValueError:
        raw = b""
    return BinaryMeasures(content_type, len(raw), sha1_base64(raw))


def sha1_base64(raw: bytes) -> str:
    """R4 Attachment.hash of `raw`: the base64 of its SHA-1."""
    return base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii")


async def readable_binaries(access: AccessPolicy, ctx: RequestContext, conn: AsyncConnection,
                            refs: set[Reference], **options: bool) -> dict[Reference, BinaryRow]:
    """The rows of the named Binaries (current version, or the named one) that exist and that the caller
    may read, by reference; `options` as for `current_binaries`. When the caller may read every Binary
    whatever its securityContext (the policy hides no Binary rows from it), no content is read."""
    reads_all = access.reads_every_binary(ctx) and "with_blobs" not in options
    if reads_all:
        options = {"versions_only": True}
    current = await current_binaries(conn, {r.id for r in refs if not r.version_id}, **options)
    named = await binary_versions(conn, {(r.id, int(r.version_id)) for r in refs if r.version_id}, **options)
    found: list[tuple[Reference, BinaryRow]] = []
    for ref in refs:
        row = named.get((ref.id, int(ref.version_id))) if ref.version_id else current.get(ref.id)
        if row is not None:
            found.append((ref, row))
    if reads_all:
        return dict(found)
    # One access decision for all of them: no query per Binary, even when securityContexts must be looked up.
    readable = await access.can_see_each(ctx, conn, [row.resource for _, row in found], "read")
    return {ref: row for (ref, row), ok in zip(found, readable, strict=True) if ok}


Named = tuple[str, dict[str, Any], Reference]  # (path of the Attachment, the Attachment, the Binary it names)


class AttachmentNormalizer:
    """WriteStep (`WritePipeline.normalize_attachment_urls`): every Attachment url naming one of our Binaries
    becomes `Binary/{id}` (or `Binary/{id}/_history/{vid}` when a version was named); that Binary (version)
    must exist and be readable by the writer; size, hash and contentType are filled from it when absent and
    must agree with it when present. Urls naming a Binary that a later entry of the same transaction writes
    are resolved once all entries are written (R4: the order of a transaction's entries does not matter)."""

    def __init__(self, access: AccessPolicy, shapes: UrlShapes) -> None:
        self.access = access
        self.shapes = shapes

    async def before_write(self, ctx: RequestContext, uow: UnitOfWork, resource: dict[str, Any]) -> None:
        """WriteStep: turns every Attachment URL that names a Binary of this server (absolute, relative, or a
        signed storage URL) into `Binary/{id}`, checks the caller may read that Binary, and fills
        in or checks size, hash and contentType (400 naming the element when they disagree)."""
        if resource.get("resourceType") == "Binary":
            return
        now: list[Named] = []
        later: list[Named] = []
        for path, attachment in iter_attachments(resource):
            url = attachment.get("url")
            if isinstance(url, str):
                ref = await self.shapes.binary_ref(url, f"{path}.url")
                if ref is not None:
                    (later if ref.relative in uow.upcoming else now).append((path, attachment, ref))
        if now:
            await self._resolve(ctx, uow.conn, now)
        if later:
            uow.defer(resource, lambda: self._resolve(ctx, uow.conn, later))

    async def _resolve(self, ctx: RequestContext, conn: AsyncConnection, named: list[Named]) -> None:
        rows = await readable_binaries(self.access, ctx, conn, {ref for _, _, ref in named}, with_blobs=True)
        for path, attachment, ref in named:
            row = rows.get(ref)
            label = stored_form(ref)
            if row is None:
                raise Invalid(f"{path}.url names {label}, which does not exist", expression=f"{path}.url")
            attachment["url"] = label
            check_measures(path, attachment, label, measures_of(row))


def check_measures(path: str, attachment: dict[str, Any], holder: str, m: BinaryMeasures) -> None:
    """Fills the Attachment's missing contentType, size and hash from the content `holder` (a Binary, or
    the Attachment's own `data`) has; a size or hash that contradicts it is Invalid naming the element."""
    if m.content_type is not None:
        attachment.setdefault("contentType", m.content_type)
    if "size" not in attachment:
        attachment.update(attachment_size(m.size))
    elif attachment["size"] != m.size:
        raise Invalid(f"{path}.size is {attachment['size']!r} but {holder} holds {m.size} bytes",
                      expression=f"{path}.size")
    if "hash" not in attachment:
        attachment["hash"] = m.sha1_b64
    elif attachment["hash"] != m.sha1_b64:
        raise Invalid(f"{path}.hash is {attachment['hash']!r} but the SHA-1 of {holder} is {m.sha1_b64}",
                      expression=f"{path}.hash")


VersionKey = tuple[str, str, str, str]


class BinaryUrlSites:
    """Where the Attachments whose url names one of our Binaries (`Binary/...`) lie in a stored version,
    remembered per version (type, id, versionId, lastUpdated): a version never changes, so a read of it
    finds them without walking the resource by its R4 types again. What is found at a remembered site is
    checked (the same url); anything else is walked."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._sites: dict[VersionKey, tuple[tuple[Site, str, Reference], ...]] = {}

    def of(self, resource: dict[str, Any]) -> list[tuple[dict[str, Any], Reference]]:
        """(Attachment, the Binary its url names) for each such Attachment of `resource`."""
        key = _version_key(resource)
        remembered = self._sites.get(key) if key is not None else None
        if remembered is not None:
            out = []
            for site, url, ref in remembered:
                attachment = at_site(resource, site)
                if not isinstance(attachment, dict) or attachment.get("url") != url:
                    break
                out.append((attachment, ref))
            else:
                return out
        found: list[tuple[dict[str, Any], Reference]] = []
        sites: list[tuple[Site, str, Reference]] = []
        for site, attachment in attachment_sites(resource):
            text = attachment.get("url")
            named = binary_reference(text, "") if isinstance(text, str) and text.startswith("Binary/") else None
            if named is not None:
                found.append((attachment, named))
                sites.append((site, str(text), named))
        if key is not None:
            if len(self._sites) >= self.size:
                self._sites.clear()
            self._sites[key] = tuple(sites)
        return found


def _version_key(resource: dict[str, Any]) -> VersionKey | None:
    meta = resource.get("meta")
    if type(meta) is not dict:
        return None
    rtype, rid, vid, stamp = resource.get("resourceType"), resource.get("id"), meta.get("versionId"), \
        meta.get("lastUpdated")
    if type(rtype) is str and type(rid) is str and type(vid) is str and type(stamp) is str:
        return rtype, rid, vid, stamp
    return None


class AttachmentUrlSigner:
    """ReadStep (`ReadPipeline.sign_attachment_urls`): each `Binary/{id}` (or `Binary/{id}/_history/{vid}`)
    Attachment url the caller may read becomes a signed storage URL of that Binary's current (or named)
    version; others stay as they are. One query per batch of resources (two when versions are named)."""

    def __init__(self, db: Database, access: AccessPolicy, signer: SignedUrl) -> None:
        self.db = db
        self.access = access
        self.signer = signer
        self.sites = BinaryUrlSites()

    async def after_read(self, ctx: RequestContext, resources: list[dict[str, Any]],
                         conn: AsyncConnection | None = None) -> None:
        """Signs the Binary URLs of `resources` in place: one look-up of all the Binaries they name (on
        `conn` when given), one access decision for all of them, one URL per Binary version."""
        targets: list[tuple[dict[str, Any], Reference]] = []
        for resource in resources:
            targets += self.sites.of(resource)
        if not targets:
            return
        access = self.access
        try:
            access.require(ctx, "read", "Binary")
        except FhirVaultError:
            return  # no Binary scope: every url stays `Binary/{id}`
        refs = {ref for _, ref in targets}
        if conn is not None:
            versions = await self._readable_versions(ctx, conn, refs)
        else:
            async with self.db.read() as own:
                versions = await self._readable_versions(ctx, own, refs)
        if not versions:
            return
        key = await self.signer.signing_key()
        expires = self.signer.expiry()
        minted: dict[Reference, str] = {}
        for attachment, ref in targets:
            url = minted.get(ref)
            if url is None:
                version = versions.get(ref)
                if version is None:
                    continue
                url = minted[ref] = self.signer.mint_with(key, ref.id, version, pinned=bool(ref.version_id),
                                                          expires=expires)
            attachment["url"] = url

    async def _readable_versions(self, ctx: RequestContext, conn: AsyncConnection, refs: set[Reference]
                                 ) -> dict[Reference, int]:
        """The version each reference stands for, of the Binaries that exist and that the caller may read."""
        if self.access.reads_every_binary(ctx) and not any(r.version_id for r in refs):
            # The caller may read every Binary, whatever its securityContext: existence decides, and
            # no content is read.
            current = await current_versions(conn, {r.id for r in refs})
            return {r: current[r.id] for r in refs if r.id in current}
        rows = await readable_binaries(self.access, ctx, conn, refs, access_fields_only=True)
        return {ref: row.version_id for ref, row in rows.items()}
