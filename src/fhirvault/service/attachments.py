"""Attachment URLs: normalized to `Binary/{id}` on write, rewritten to signed storage URLs on read."""

from __future__ import annotations

import base64
import functools
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.errors import FhirVaultError, Invalid
from fhirvault.fhir.attachments import Site, at_site, attachment_sites, iter_attachments
from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, decode_base64_strict
from fhirvault.fhir.references import Reference, normalized_url, parse_reference
from fhirvault.fhir.validation import attachment_size
from fhirvault.security.url_signing import MINTED_CACHE_SIZE, SignedUrl
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
        URL. Equivalent spellings of an absolute URL count alike (`HTTP://`, a default port, `/./`:
        references.normalized_url). A storage URL of ours whose signature is wrong is refused: it names
        nothing we handed out."""
        ref = binary_reference(url, self.fhir_base_url)
        if ref is not None:
            return ref
        if "://" in url:
            url = normalized_url(url)
            ref = binary_reference(url, normalized_url(self.fhir_base_url))
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
        # The Attachment urls of the version this write replaces: one kept as it was stays, even when its
        # Binary is gone since (an edit elsewhere in the resource must not fail on it).
        # Likewise one kept with the size and hash it was written with stays after its Binary got new content
        # (they describe the version it was written against, as README says: a read-modify-write of the
        # resource must not fail on them).
        previous = uow.replacing.get(f"{resource.get('resourceType')}/{resource.get('id')}")
        before = [a for _, a in iter_attachments(previous)] if previous is not None else []
        kept = Counter(a.get("url") for a in before)
        as_written = Counter(_measured(a.get("url"), a) for a in before if "size" in a or "hash" in a)
        if now:
            await self._resolve(ctx, uow.conn, now, kept, as_written)
        if later:
            uow.defer(resource, lambda: self._resolve(ctx, uow.conn, later, kept, as_written))

    async def _resolve(self, ctx: RequestContext, conn: AsyncConnection, named: list[Named],
                       kept: Counter[Any] | None = None, as_written: Counter[Any] | None = None) -> None:
        """Normalizes and checks the `named` Attachments. `kept`: how many Attachments of the version being
        replaced name each url; that many may still name a Binary deleted since (no more: a new one may not).
        `as_written`: how many of them had each (url, size, hash); that many keep their size and hash
        unchecked, since they describe the Binary's content when they were written."""
        kept = kept if kept is not None else Counter()
        as_written = as_written if as_written is not None else Counter()
        rows = await readable_binaries(self.access, ctx, conn, {ref for _, _, ref in named}, with_blobs=True)
        for path, attachment, ref in named:
            row = rows.get(ref)
            label = stored_form(ref)
            if row is None:
                if attachment.get("url") == label and kept[label] > 0:
                    kept[label] -= 1
                    continue  # unchanged since it was written, when it named a Binary that existed
                raise Invalid(f"{path}.url names {label}, which does not exist", expression=f"{path}.url")
            attachment["url"] = label
            key = _measured(label, attachment)
            if ("size" in attachment or "hash" in attachment) and as_written[key] > 0:
                as_written[key] -= 1
                continue
            check_measures(path, attachment, label, measures_of(row))


def _measured(url: Any, attachment: dict[str, Any]) -> tuple[Any, Any, Any]:
    """An Attachment's url with the size and hash it states: what "kept as it was written" compares."""
    return url, attachment.get("size"), attachment.get("hash")


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

# How an Attachment url naming one of our Binaries starts in a JSON text that `dumps_stored` wrote (compact).
# Ids and version ids hold no character JSON escapes, so `"url":"Binary/{id}"` is the url's whole text.
_STORED_URL = b'"url":"Binary/'
_URL_KEY = b'"url":'


def stored_url_text(url: str) -> bytes:
    """The text of an Attachment url `Binary/...` in a stored resource's JSON: `"url":"Binary/..."`."""
    return _URL_KEY + jsoncodec.dumps(url)


def _signing_key(ref: Reference) -> str:
    """How signing names what a Binary reference stands for: the id (its current version), or
    `{id}/_history/{vid}` (that version). Plain strings hash once, so the look-ups of a page cost little."""
    return f"{ref.id}/_history/{ref.version_id}" if ref.version_id else ref.id


@dataclass(frozen=True)
class UrlSite:
    """One Attachment whose url names one of our Binaries: where it lies, its url, the url's text in the
    version's JSON (`stored_url_text`), the Binary it names and that Binary's `_signing_key`."""

    site: Site
    url: str
    text: bytes
    ref: Reference
    key: str


@dataclass(frozen=True)
class UrlSites:
    """The Binary urls of one stored version. `current`: the ids of the Binaries named without a version;
    `pinned`: the references that name a version; `by_text`: whether every `"url":"Binary/...` in the
    version's JSON is one of `sites`, so that signing can replace them in the text without parsing it;
    `spans`: then where each lies in that text, in order ((start, end) byte offsets, its site)."""

    sites: tuple[UrlSite, ...]
    current: frozenset[str]
    pinned: frozenset[Reference]
    by_text: bool
    spans: tuple[tuple[int, int, UrlSite], ...] = ()

    def splice(self, text: bytes, signed: dict[str, tuple[str, bytes]]) -> bytes | None:
        """`text` with the url of each span replaced by its `signed` JSON text (by site key; a site without
        one keeps its url), in one copy; None unless `text` holds exactly these spans' urls at their offsets
        (the version's text as the spans were found in)."""
        if text.count(_STORED_URL) != len(self.spans):
            return None
        parts: list[bytes | memoryview] = []
        view = memoryview(text)
        last = 0
        for start, end, site in self.spans:
            if not text.startswith(site.text, start):
                return None
            new = signed.get(site.key)
            if new is not None:
                parts += (view[last:start], new[1])
                last = end
        parts.append(view[last:])
        return b"".join(parts)


class BinaryUrlSites:
    """The UrlSites of stored versions, remembered per version (type, id, versionId, lastUpdated): a version
    never changes, so a read of it finds its Binary urls without walking the resource by its R4 types again."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._sites: dict[VersionKey, UrlSites] = {}

    def of(self, resource: dict[str, Any], text: bytes) -> UrlSites:
        """The UrlSites of `resource`, whose JSON text (`dumps_stored`) is `text`."""
        key = _version_key(resource)
        known = self._sites.get(key) if key is not None else None
        if known is not None:
            return known
        sites: list[UrlSite] = []
        for site, attachment in attachment_sites(resource):
            url = attachment.get("url")
            if isinstance(url, str) and url.startswith("Binary/"):
                named = binary_reference(url, "")
                if named is not None:
                    sites.append(UrlSite(site, url, stored_url_text(url), named, _signing_key(named)))
        spans = _spans(text, sites)
        found = UrlSites(tuple(sites), frozenset(s.ref.id for s in sites if not s.ref.version_id),
                         frozenset(s.ref for s in sites if s.ref.version_id), spans is not None, spans or ())
        if key is not None:
            if len(self._sites) >= self.size:
                self._sites.clear()
            self._sites[key] = found
        return found


def _spans(text: bytes, sites: list[UrlSite]) -> tuple[tuple[int, int, UrlSite], ...] | None:
    """Where each `"url":"Binary/...` of `text` lies and which of `sites` it is, in text order; None when one
    of them is none of `sites` (something else reads `"url":"Binary/...`) or a site is not found."""
    spans: list[tuple[int, int, UrlSite]] = []
    start = text.find(_STORED_URL)
    while start >= 0:
        site = next((s for s in sites if text.startswith(s.text, start)), None)
        if site is None:
            return None
        spans.append((start, start + len(site.text), site))
        start = text.find(_STORED_URL, start + 1)
    return tuple(spans) if len(spans) == len(sites) else None


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
    """TextReadStep (`ReadPipeline.sign_attachment_urls`): each `Binary/{id}` (or `Binary/{id}/_history/{vid}`)
    Attachment url the caller may read becomes a signed storage URL of that Binary's current (or named)
    version; others stay as they are. One query per batch of resources (two when versions are named)."""

    def __init__(self, db: Database, access: AccessPolicy, signer: SignedUrl) -> None:
        self.db = db
        self.access = access
        self.signer = signer
        self.sites = BinaryUrlSites()
        self._texts: dict[str, tuple[int, str, bytes]] = {}
        self._window: tuple[str, int] | None = None

    async def rewrite_texts(self, ctx: RequestContext, resources: list[dict[str, Any]], texts: list[bytes],
                            conn: AsyncConnection | None = None) -> list[bytes]:
        """The JSON texts (`dumps_stored`) of `resources` with their Binary urls signed: one look-up of all
        the Binaries they name (on `conn` when given), one access decision for all of them, one URL per
        Binary version. The urls are replaced in the text, which is not parsed, unless something else in
        the resource reads `"url":"Binary/..."` too; that resource is parsed and changed at its sites."""
        found = [self.sites.of(resource, text) for resource, text in zip(resources, texts, strict=True)]
        current: set[str] = set()
        pinned: set[Reference] = set()
        for sites in found:
            current |= sites.current
            if sites.pinned:
                pinned |= sites.pinned
        if not (current or pinned):
            return texts
        try:
            self.access.require(ctx, "read", "Binary")
        except FhirVaultError:
            return texts  # no Binary scope: every url stays `Binary/{id}`
        if conn is not None:
            versions = await self._readable_versions(ctx, conn, current, pinned)
        else:
            async with self.db.read() as own:
                versions = await self._readable_versions(ctx, own, current, pinned)
        if not versions:
            return texts
        signed = await self._signed_texts(versions)
        out: list[bytes] = []
        for text, sites in zip(texts, found, strict=True):
            if not sites.sites:
                out.append(text)
                continue
            spliced = sites.splice(text, signed) if sites.by_text else None
            if spliced is not None:
                out.append(spliced)
            else:
                # Not every `"url":"Binary/…` is one of the Attachment urls (or the text is not the one the
                # sites were found in): the urls are changed at their sites only.
                copy = jsoncodec.loads(text)
                for site in sites.sites:
                    attachment = at_site(copy, site.site)
                    if isinstance(attachment, dict) and attachment.get("url") == site.url and site.key in signed:
                        attachment["url"] = signed[site.key][0]
                out.append(jsoncodec.dumps_stored(copy))
        return out

    async def _signed_texts(self, versions: dict[str, int]) -> dict[str, tuple[str, bytes]]:
        """The signed URL and its `"url":"{signed URL}"` JSON text, by `_signing_key`, for the version each
        stands for. A signed URL is the same for a whole window and key, so both are remembered until either
        moves on."""
        key = await self.signer.signing_key()
        expires = self.signer.expiry()
        if self._window != (key.kid, expires) or len(self._texts) >= MINTED_CACHE_SIZE:
            self._texts.clear()
            self._window = (key.kid, expires)
        memo = self._texts
        out: dict[str, tuple[str, bytes]] = {}
        for name, version in versions.items():
            known = memo.get(name)
            if known is None or known[0] != version:
                binary_id, _, pinned = name.partition("/_history/")
                url = self.signer.mint_with(key, binary_id, version, pinned=bool(pinned), expires=expires)
                known = memo[name] = (version, url, _URL_KEY + jsoncodec.dumps(url))
            out[name] = known[1:]
        return out

    async def _readable_versions(self, ctx: RequestContext, conn: AsyncConnection, current: set[str],
                                 pinned: set[Reference]) -> dict[str, int]:
        """The version each `_signing_key` stands for, of the Binaries that exist and that the caller may read:
        `current` ids (their current versions) and `pinned` references."""
        if self.access.reads_every_binary(ctx) and not pinned:
            # The caller may read every Binary, whatever its securityContext: existence decides, and
            # no content is read.
            return await current_versions(conn, current)
        refs = {Reference("Binary", rid) for rid in current} | pinned
        rows = await readable_binaries(self.access, ctx, conn, refs, access_fields_only=True)
        return {_signing_key(ref): row.version_id for ref, row in rows.items()}
