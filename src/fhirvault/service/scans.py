"""Malware scanning of stored content: verdicts by SHA-256, the background scan jobs, the blocking policy
(SCAN_MODE) and the scan-status extension shown on every Binary."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.blobs.base import BlobStore
from fhirvault.clock import now_us
from fhirvault.errors import Forbidden, Invalid, Locked
from fhirvault.fhir.attachments import iter_attachments
from fhirvault.fhir.binary import decode_base64_strict
from fhirvault.fhir.scan_definitions import CLEAN, ERROR, INFECTED, PENDING, SCAN_STATES, SKIPPED, extension_url
from fhirvault.fhir.validation import resources_within
from fhirvault.jobs.queue import PENDING as JOB_PENDING
from fhirvault.jobs.queue import Job, JobQueue
from fhirvault.jobs.scanner import Scanner, ScannerUnavailable
from fhirvault.jobs.worker import PermanentJobError
from fhirvault.security.principal import Caller, Principal
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.service.timeutil import to_instant
from fhirvault.store import scan_rows
from fhirvault.store.blobs import COMMITTED, BlobRegistry
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore, StoredResource
from fhirvault.store.scan_rows import ScanRecord
from fhirvault.store.schema import resource_versions
from fhirvault.streams import one_chunk

log = logging.getLogger("fhirvault.scans")

JOB_KIND = "scan"
# The scan-status extension (on Binary.meta, since R4's Binary has no extension element of its own) is
# defined under the server's FHIR base: {base}/StructureDefinition/scan-status (fhir/scan_definitions.py).
EXTENSION_PATH = extension_url("")
# How any copy of the extension's url looks in a resource's JSON text (whatever the base it names).
_EXTENSION_TEXT = EXTENSION_PATH.encode()
# The request header by which an administrative client asks for content the policy would refuse.
OVERRIDE_HEADER = "X-Scan-Override"
# Served in block mode: scanned clean, or deliberately not scanned (above SCAN_MAX_BYTES).
SERVABLE = (CLEAN, SKIPPED)
# Verdicts a later holding of the same content takes over without a new scan (until a rescan).
FINAL = (CLEAN, INFECTED, SKIPPED)
# Longest wait (seconds) of a later holding taking a verdict over (see `run`).
MAX_TAKEOVER_WAIT = 300.0

ScanMode = Literal["off", "record", "block"]


@dataclass(frozen=True)
class ContentSource:
    """Where the bytes of one content can be read: their size and a fresh stream of them."""

    size: int
    open: Callable[[], AsyncIterator[bytes]]


def scan_extension(base_url: str, record: ScanRecord | None) -> dict[str, Any]:
    """The scan-status extension for a verdict (None: never recorded, shown as pending): `status` (code:
    pending | clean | infected | error | skipped), `signature` when infected, `scanned` (instant) once
    a verdict was reached."""
    parts: list[dict[str, Any]] = [{"url": "status", "valueCode": record.state if record else PENDING}]
    if record is not None and record.state == INFECTED and record.signature:
        parts.append({"url": "signature", "valueString": record.signature})
    if record is not None and record.scanned_at:
        parts.append({"url": "scanned", "valueInstant": to_instant(record.scanned_at)})
    return {"url": extension_url(base_url), "extension": parts}


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nested_binaries(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The Binaries inside `resource` (contained, in a Bundle's entries, in a Parameters), at any depth:
    their `data` is content the resource holds, scanned and held back like an Attachment's."""
    root = resource.get("resourceType")
    if not isinstance(root, str):
        return []
    return [inner for inner, _ in resources_within(resource, root)
            if inner is not resource and inner.get("resourceType") == "Binary"]


def _inline_contents(resource: dict[str, Any]) -> list[bytes]:
    """The inline bytes a resource holds: a Binary's `data`, or every Attachment's `data`, and the `data`
    of the Binaries inside it."""
    if resource.get("resourceType") == "Binary":
        data = resource.get("data")
        values = [data] if isinstance(data, str) and data else []
    else:
        values = [a["data"] for _, a in iter_attachments(resource) if isinstance(a.get("data"), str) and a["data"]]
    values += [b["data"] for b in nested_binaries(resource) if isinstance(b.get("data"), str) and b["data"]]
    out = []
    for value in values:
        try:
            out.append(decode_base64_strict(value, "data"))
        except ValueError:
            continue  # stored before base64 was checked: nothing a browser could be served as bytes
    return out


class ContentScans:
    """Scanning of every content stored (Binary content, inline or in blob storage, and the inline `data` of
    Attachments), once per distinct content.

    - Write side (`before_commit`, the WritePipeline's `record_content_scans` slot): in the write transaction,
      each version's contents are recorded by SHA-256 in `content_refs` and, without a verdict yet, a scan
      job is queued in the same transaction (so none is lost to a crash).
    - Jobs (`run`): stream the bytes to the scanner and record clean / infected / skipped; a scanner that
      is away records `error` and the job is retried with backoff (SCAN_MAX_ATTEMPTS, SCAN_BACKOFF_SECONDS).
    - Read side: `check_servable` is the blocking policy every byte-serving path asks; `after_read` (the
      ReadPipeline's `show_scan_status` slot) puts the verdict on each Binary as an extension of its meta.
    """

    def __init__(self, db: Database, rows: ResourceStore, registry: BlobRegistry, blob_store: BlobStore | None,
                 jobs: JobQueue, scanner: Scanner | None, *, mode: ScanMode, max_bytes: int,
                 fhir_base_url: str) -> None:
        self.db = db
        self.rows = rows
        self.registry = registry
        self.blob_store = blob_store
        self.jobs = jobs
        self.scanner = scanner
        self.mode = mode
        self.max_bytes = max_bytes

    @property
    def enabled(self) -> bool:
        """Whether SCAN_MODE is record or block."""
        return self.mode != "off"

    # -- write side -----------------------------------------------------------------------------
    async def before_commit(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        """BeforeCommitStep: record the contents of every version the unit wrote and queue scans of those
        without a verdict (pending or error)."""
        if not self.enabled:
            return
        refs: list[tuple[str, str, int, str]] = []
        for stored in uow.written:
            for sha in await self._contents_of(uow.conn, stored):
                refs.append((stored.resource_type, stored.id, stored.version_id, sha))
        if refs and await self._record_and_queue(uow.conn, refs):
            uow.on_commit.append(self.jobs.notify)

    async def _contents_of(self, conn: AsyncConnection, stored: StoredResource) -> set[str]:
        """SHA-256 of each content a stored version holds (its blob's, and its inline data's)."""
        if stored.deleted or stored.content is None:
            return set()
        shas = {_sha256_hex(raw) for raw in _inline_contents(stored.content)}
        if stored.blob_id:
            record = await self.registry.get(conn, stored.blob_id)
            if record is not None and record.sha256:
                shas.add(record.sha256)
        return shas

    async def _record_and_queue(self, conn: AsyncConnection, refs: list[tuple[str, str, int, str]]) -> int:
        """Record the holdings (unchecked) and queue a job for each content, whatever its verdict: the job
        checks the new holdings, scanning only content without a verdict. Returns how many contents."""
        await scan_rows.add_refs(conn, refs, now_us())
        shas = sorted({sha for *_, sha in refs})
        for sha in shas:
            await self._enqueue(conn, sha, rescan=False)
        return len(shas)

    async def _enqueue(self, conn: AsyncConnection, sha: str, *, rescan: bool) -> None:
        # A running job may already have checked the holdings it knew of: only a pending one covers new ones.
        await self.jobs.enqueue_in(conn, JOB_KIND, {"sha256": sha, "rescan": rescan}, subject=f"sha256:{sha}",
                                   dedupe_key=f"rescan:{sha}" if rescan else sha, dedupe_states=(JOB_PENDING,))

    # -- the scan job ---------------------------------------------------------------------------
    async def run(self, job: Job) -> dict[str, Any] | None:
        """Scan one content (payload `{"sha256": hex}`) and record the verdict; returns it as the job's
        result. ScannerUnavailable (after recording `error`) makes the queue retry with backoff."""
        sha = str(job.payload.get("sha256") or "")
        if self.scanner is None:
            raise PermanentJobError("SCAN_MODE is off: no scanner is configured")
        known = await self.verdict(sha)
        if known is not None and known.state in FINAL and not job.payload.get("rescan"):
            # Scanned before: the new holdings get that verdict without asking the scanner again, after as long
            # as the scan took, so that the verdict arrives when it would for new content.
            await asyncio.sleep(min(known.scan_seconds or 0.0, MAX_TAKEOVER_WAIT))
            async with self.db.write() as conn:
                await scan_rows.mark_checked(conn, sha)
            return {"state": known.state, "scanned": False}
        source = await self.source(sha)
        if source is None:
            # Every version that held it was expunged: nothing is left to serve or scan.
            return {"state": "gone"}
        if source.size > self.max_bytes:
            await self._record(sha, SKIPPED, detail=f"{source.size} bytes, over SCAN_MAX_BYTES ({self.max_bytes})",
                               size=source.size)
            return {"state": SKIPPED}
        digest = hashlib.sha256()

        async def checked() -> AsyncIterator[bytes]:
            async for chunk in source.open():
                digest.update(chunk)
                yield chunk

        started = time.monotonic()
        try:
            verdict = await self.scanner.scan(checked())
        except ScannerUnavailable as exc:
            await self._record(sha, ERROR, detail=str(exc), size=source.size)
            raise
        if verdict.too_large:
            await self._record(sha, SKIPPED, size=source.size,
                               detail=f"{source.size} bytes: the scanner refused them (over clamd's StreamMaxLength)")
            return {"state": SKIPPED}
        if digest.hexdigest() != sha:
            await self._record(sha, ERROR, detail="the stored bytes no longer match their SHA-256", size=source.size)
            raise PermanentJobError(f"the stored bytes of content {sha} do not match their SHA-256")
        took = time.monotonic() - started
        if verdict.infected:
            log.warning("content sha256:%s is infected: %s", sha, verdict.signature)
            await self._record(sha, INFECTED, signature=verdict.signature, size=source.size, scan_seconds=took)
            return {"state": INFECTED, "signature": verdict.signature}
        await self._record(sha, CLEAN, size=source.size, scan_seconds=took)
        return {"state": CLEAN}

    async def _record(self, sha: str, state: str, *, signature: str | None = None, detail: str | None = None,
                      size: int | None = None, scan_seconds: float | None = None) -> None:
        async with self.db.write() as conn:
            await scan_rows.record_verdict(conn, sha, state, signature=signature, detail=detail, size=size,
                                           scan_seconds=scan_seconds, now=now_us())
            await scan_rows.mark_checked(conn, sha)

    async def source(self, sha: str) -> ContentSource | None:
        """Some stored place holding the content with this SHA-256: a committed blob, or inline data of a
        version recorded as holding it; None when no such version is left."""
        async with self.db.read() as conn:
            for rtype, rid, vid in await scan_rows.refs_of(conn, sha):
                stored = await self.rows.get_version(conn, rtype, rid, vid)
                if stored is None or stored.content is None:
                    continue
                if stored.blob_id and self.blob_store is not None:
                    record = await self.registry.get(conn, stored.blob_id)
                    if record is not None and record.state == COMMITTED and record.sha256 == sha:
                        return ContentSource(record.size or 0,
                                             functools.partial(self.blob_store.get, record.storage_key, 0, None))
                for raw in _inline_contents(stored.content):
                    if _sha256_hex(raw) == sha:
                        return ContentSource(len(raw), functools.partial(one_chunk, raw))
        return None

    # -- read side ------------------------------------------------------------------------------
    async def verdict(self, sha256: str) -> ScanRecord | None:
        """The recorded verdict on the content with this SHA-256 (hex), or None."""
        async with self.db.read() as conn:
            return await scan_rows.get(conn, sha256)

    async def check_servable(self, sha256: str, size: int, holder: tuple[str, str, int] | None,
                             principal: Caller | None, override: bool) -> None:
        """The blocking policy, asked by every path that serves stored bytes: `holder` (type, id, version) is
        the version whose content is served. In `block` mode content that is not known clean (or skipped)
        is refused: Locked (423) while pending (also while no scan job has checked this holding yet) or in
        error, Forbidden (403) when infected; an administrative client (`system/*.cruds`) that asks with
        `X-Scan-Override: true` gets it anyway (logged). Empty content has nothing to scan. Other modes
        serve everything."""
        if self.mode != "block" or size == 0:
            return
        async with self.db.read() as conn:
            checked = await scan_rows.holding_checked(conn, *holder, sha256) if holder else None
            record = await scan_rows.get(conn, sha256) if checked is not False else None
        state = record.state if record is not None else PENDING
        if state in SERVABLE:
            return
        if override and _is_admin(principal):
            log.warning("client %s read content sha256:%s (scan state %s) with %s",
                        getattr(principal, "client_id", "?"), sha256, state, OVERRIDE_HEADER)
            return
        hint = (f" ({OVERRIDE_HEADER} is honoured only for administrative clients, scope system/*.cruds)"
                if override else "")
        if state == INFECTED:
            raise Forbidden(f"The content was found infected by the malware scanner "
                            f"({record.signature if record else 'unknown'}) and is not served{hint}",
                            code="security")
        what = "is waiting for its malware scan" if state == PENDING else "could not be scanned for malware yet"
        raise Locked(f"The content {what} (scan status {state}) and is not served until it is found clean; "
                     f"retry later{hint}")

    @staticmethod
    async def _verdicts(conn: AsyncConnection, keys: dict[tuple[str, int], list[dict[str, Any]]],
                        own: dict[int, str], inline: list[tuple[dict[str, Any], dict[str, Any], bytes, str]]
                        ) -> tuple[dict[tuple[str, int], tuple[str, bool]], dict[str, ScanRecord]]:
        """What each (Binary id, version) holds, and the verdicts of those contents, of `own` ones and of the
        `inline` Attachment data."""
        holdings = await scan_rows.version_contents(conn, keys) if keys else {}
        verdicts = await scan_rows.states_of(conn, [*(sha for sha, _ in holdings.values()), *own.values(),
                                                    *(sha for *_, sha in inline)])
        return holdings, verdicts

    async def after_read(self, ctx: RequestContext, resources: list[dict[str, Any]],
                         conn: AsyncConnection | None = None, texts: list[bytes] | None = None) -> None:
        """ReadStep: each Binary gets the scan-status extension of its content on `meta`, and each Attachment
        with inline `data` (in any other resource, at any depth: fhir/attachments.iter_attachments) the one of
        its data on its own `extension`; any stored copy is replaced, so the verdict shown is always the
        current one; none when SCAN_MODE is off. In `block` mode content held back (pending, error, infected)
        is rendered without its inline `data` (read, vread, history, search, Bundles, write answers alike;
        an Attachment keeps contentType and gets `size` and `hash` when it had none), unless an
        administrative client asked with X-Scan-Override: true."""
        if not self.enabled:
            # Nothing to show: only stored copies of the extension (sent in a write) are taken out, and a
            # resource's JSON text tells at once whether it has one, without walking its Attachments.
            if texts is None:
                texts = [jsoncodec.dumps(r) for r in resources]
            resources = [r for r, text in zip(resources, texts, strict=True) if _EXTENSION_TEXT in text]
            if not resources:
                return
        binaries = [r for r in resources if r.get("resourceType") == "Binary"]
        for r in binaries:
            meta = r.get("meta")
            if isinstance(meta, dict):
                _strip(meta)
        attachments = [(r, att) for r in resources if r.get("resourceType") != "Binary"
                       for _, att in iter_attachments(r)]
        for _, att in attachments:
            _strip(att)
        # A Binary inside another resource carries its verdict on its own meta, as a stored Binary does.
        inner = [(r, b) for r in resources for b in nested_binaries(r)]
        for _, b in inner:
            if isinstance(b.get("meta"), dict):
                _strip(b["meta"])
        if not self.enabled or not (binaries or attachments or inner):
            return
        keys: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in binaries:
            version = _version_of(r)
            if isinstance(r.get("id"), str) and version is not None:
                keys.setdefault((r["id"], version), []).append(r)
        # Inline content recorded by no version yet (stored before scanning was on) is known by its data.
        own = {id(r): _sha256_hex(raw[0]) for r in binaries if (raw := _inline_contents(r))}
        inline = _inline_attachments(attachments)
        inline_binaries = _inline_attachments(inner)
        holders = [(str(r["resourceType"]), str(r["id"]), v, sha) for r, _, _, sha in [*inline, *inline_binaries]
                   if isinstance(r.get("id"), str) and (v := _version_of(r)) is not None]
        if conn is not None:  # the read's own connection (a search page): no second one
            holdings, verdicts = await self._verdicts(conn, keys, own, [*inline, *inline_binaries])
            checked = await scan_rows.holdings_checked(conn, holders) if holders else {}
        else:
            async with self.db.read() as own_conn:
                holdings, verdicts = await self._verdicts(own_conn, keys, own, [*inline, *inline_binaries])
                checked = await scan_rows.holdings_checked(own_conn, holders) if holders else {}
        may_override = ctx.scan_override and _is_admin(ctx.principal)
        for key, found in keys.items():
            for r in found:
                sha, was_checked = holdings.get(key) or (own.get(id(r)), True)
                # Until a job checked this holding it is pending, whatever the content's verdict (see content_refs).
                record = verdicts.get(sha) if sha and was_checked else None
                meta = r.setdefault("meta", {})
                meta["extension"] = [*meta.get("extension", []), scan_extension(ctx.base_url, record)]
                held_back = record is None or record.state not in SERVABLE
                if self.mode == "block" and "data" in r and held_back and not may_override:
                    del r["data"]
        for r, att, content, sha in inline:
            version = _version_of(r)
            holding = (str(r.get("resourceType")), str(r.get("id")), version, sha) if version is not None else None
            # No holding recorded (stored before scanning was on, or no version): the content's verdict counts.
            record = verdicts.get(sha) if holding is None or checked.get(holding, True) else None
            att["extension"] = [*att.get("extension", []), scan_extension(ctx.base_url, record)]
            held_back = record is None or record.state not in SERVABLE
            if self.mode == "block" and held_back and not may_override:
                del att["data"]
                # Say what was left out: its size and SHA-1 (R4 Attachment.size, .hash) unless already given.
                att.setdefault("size", len(content))
                att.setdefault("hash", base64.b64encode(hashlib.sha1(content).digest()).decode("ascii"))
        for r, b, _, sha in inline_binaries:
            version = _version_of(r)
            holding = (str(r.get("resourceType")), str(r.get("id")), version, sha) if version is not None else None
            record = verdicts.get(sha) if holding is None or checked.get(holding, True) else None
            meta = b.setdefault("meta", {})
            meta["extension"] = [*meta.get("extension", []), scan_extension(ctx.base_url, record)]
            if self.mode == "block" and (record is None or record.state not in SERVABLE) and not may_override:
                del b["data"]

    # -- the command line -----------------------------------------------------------------------
    async def queue_existing(self, rescan_all: bool = False, batch: int = 200) -> dict[str, int]:
        """`fhirvault scan`: record the contents of every stored version not recorded yet (content stored
        before scanning was on), and queue scans of every content without a verdict (pending, error);
        with `rescan_all`, of every content (after a signature update: a verdict stays until the new one
        lands). Returns counts: `versions` looked at, `queued` contents."""
        looked = 0
        after: tuple[str, str, int] = ("", "", 0)
        v = resource_versions
        while True:
            async with self.db.write() as conn:
                key = sa.tuple_(v.c.resource_type, v.c.id, v.c.version_id)
                stmt = (sa.select(v.c.resource_type, v.c.id, v.c.version_id)
                        .where(key > sa.tuple_(*[sa.literal(x) for x in after]), v.c.deleted.is_(False),
                               sa.or_(v.c.resource_type == "Binary", v.c.content.like('%"data"%')))
                        .order_by(v.c.resource_type, v.c.id, v.c.version_id).limit(batch))
                page = [(r.resource_type, r.id, r.version_id) for r in await conn.execute(stmt)]
                if not page:
                    break
                after = page[-1]
                refs: list[tuple[str, str, int, str]] = []
                for rtype, rid, vid in page:
                    stored = await self.rows.get_version(conn, rtype, rid, vid)
                    if stored is not None:
                        refs += [(rtype, rid, vid, sha) for sha in await self._contents_of(conn, stored)]
                looked += len(page)
                await scan_rows.add_refs(conn, refs, now_us())
        # Contents with holdings not checked yet (just recorded, or left by a crash), those without a final
        # verdict, and with `rescan_all` every content (scanned again, whatever it was found to be).
        pages: list[tuple[Callable[[AsyncConnection, str], Awaitable[list[str]]], bool]] = [
            (lambda conn, start: scan_rows.unchecked_shas(conn, after=start, limit=batch), False),
            (lambda conn, start: scan_rows.shas_in_states(conn, (PENDING, ERROR), after=start, limit=batch), False)]
        if rescan_all:
            pages.append((lambda conn, start: scan_rows.shas_in_states(conn, SCAN_STATES, after=start, limit=batch),
                          True))
        queued_shas: set[str] = set()
        for page_of, rescan in pages:
            last = ""
            while True:
                async with self.db.write() as conn:
                    shas = await page_of(conn, last)
                    if not shas:
                        break
                    last = shas[-1]
                    for sha in shas:
                        await self._enqueue(conn, sha, rescan=rescan)
                queued_shas.update(shas)
        self.jobs.notify()
        return {"versions": looked, "queued": len(queued_shas)}


def _strip(element: dict[str, Any]) -> None:
    """Remove any scan-status extension from `element`'s `extension` (a stored copy, possibly forged)."""
    if not isinstance(element.get("extension"), list):
        return
    kept = [e for e in element["extension"]
            if not (isinstance(e, dict) and str(e.get("url", "")).endswith(EXTENSION_PATH))]
    if kept:
        element["extension"] = kept
    else:
        del element["extension"]


def _version_of(resource: dict[str, Any]) -> int | None:
    """The resource's meta.versionId as a number, None when it has none."""
    version = str((resource.get("meta") or {}).get("versionId") or "")
    return int(version) if version.isdigit() else None


def _inline_attachments(attachments: list[tuple[dict[str, Any], dict[str, Any]]]
                        ) -> list[tuple[dict[str, Any], dict[str, Any], bytes, str]]:
    """(resource, Attachment, decoded bytes, SHA-256 hex) of each Attachment with non-empty inline base64 `data`
    (data that is no valid base64, stored before it was checked, is left as it is)."""
    out = []
    for r, att in attachments:
        value = att.get("data")
        if not isinstance(value, str) or not value:
            continue
        try:
            raw = decode_base64_strict(value, "data")
        except ValueError:
            continue
        if raw:
            out.append((r, att, raw, _sha256_hex(raw)))
    return out


def parse_override(value: str | None) -> bool:
    """The X-Scan-Override header's meaning: absent or `false` no override, `true` an override (the policy
    decides whether the caller may); any other value is Invalid (400), never silently ignored."""
    if value is None:
        return False
    word = value.strip().lower()
    if word in ("true", "false"):
        return word == "true"
    raise Invalid(f"The header {OVERRIDE_HEADER} must be 'true' or 'false', not '{value[:40]}'")


def _is_admin(principal: Caller | None) -> bool:
    """An authenticated administrative client: system level, every interaction on every type."""
    return isinstance(principal, Principal) and principal.patient is None and principal.scopes.is_admin
