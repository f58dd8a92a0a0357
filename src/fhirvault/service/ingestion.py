"""Ingestion of external Attachment URLs: scheduling a job per URL on write, and the job that stores the
content as a Binary and points the Attachment at it."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from fhirvault.config import Settings
from fhirvault.errors import FhirVaultError, Gone, NotFound, TooLarge
from fhirvault.fhir.attachments import iter_attachments
from fhirvault.fhir.binary import is_media_type
from fhirvault.fhir.validation import attachment_size
from fhirvault.jobs.fetcher import Fetcher, FetchLimits, FetchRefused, deadline, redacted, within_prefixes
from fhirvault.jobs.queue import FAILED, Job, JobQueue
from fhirvault.jobs.worker import PermanentJobError
from fhirvault.security.principal import SYSTEM_JOBS
from fhirvault.service.binaries import BinaryContent
from fhirvault.service.context import RequestContext
from fhirvault.service.resources import ResourceService, WriteResult

log = logging.getLogger("fhirvault.ingestion")

JOB_KIND = "ingest-attachment"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
FAILED_REASON = "The content could not be fetched from the URL; the server log has the details"
RETRY_REASON = "An attempt to fetch the content failed and will be repeated; the server log has the details"


class JobContext(RequestContext):
    """The context of work done by background jobs on the server's own authority."""


def job_context(base_url: str) -> RequestContext:
    """The one place that creates the caller background jobs act as: the server itself."""
    return JobContext(base_url=base_url, principal=SYSTEM_JOBS)


class BinaryWriter(Protocol):
    """What ingestion needs of the Binary service (service/binaries.py)."""

    async def create_from_stream(self, ctx: RequestContext, chunks: AsyncIterator[bytes], *, content_type: str,
                                 security_context: str | None = None, filename: str | None = None
                                 ) -> WriteResult:
        """Creates a Binary from streamed bytes of `content_type`, as a raw POST /Binary does."""

    async def content(self, ctx: RequestContext, binary_id: str, version_id: int | None = None
                      ) -> BinaryContent:
        """The stored content of a Binary (current version, or `version_id`), for reading its bytes."""


@dataclass(frozen=True)
class IngestionRules:
    """Which Attachment URLs are fetched, from the settings and our own addresses."""

    enabled: bool
    allowed_hosts: frozenset[str]
    allowed_prefixes: tuple[str, ...]
    own_prefixes: tuple[str, ...]  # our FHIR base, our signed storage URLs

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestionRules:
        """The rules of INGEST_ENABLED, INGEST_ALLOW_HOSTS and INGEST_ALLOW_PREFIXES, with this server's own
        FHIR and storage prefixes (never fetched: they are references already)."""
        base = settings.public_base_url.lower()
        hosts = frozenset(h.strip("[]") for h in settings.ingest_allowed_hosts)
        return cls(settings.ingest_enabled, hosts, tuple(settings.ingest_allowed_prefixes),
                   (f"{base}/fhir/", f"{base}/storage/", f"{settings.storage_base_url.lower()}/storage/"))

    def wants(self, url: Any) -> bool:
        """True for an external https URL (http when its host is allowed) that is not one of ours and
        passes the prefix allow-list."""
        if not self.enabled or not isinstance(url, str):
            return False
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return False
        scheme = parts.scheme.lower()
        if not host or not (scheme == "https" or (scheme == "http" and host in self.allowed_hosts)):
            return False
        if url.lower().startswith(self.own_prefixes):
            return False
        return within_prefixes(url, self.allowed_prefixes)


class IngestionScheduler:
    """AfterCommitHook: queues one job per external Attachment URL of each written resource."""

    def __init__(self, queue: JobQueue, rules: IngestionRules) -> None:
        self.queue = queue
        self.rules = rules

    async def after_commit(self, ctx: RequestContext, resource: dict[str, Any]) -> None:
        """AfterCommitStep: queues one durable fetch job per Attachment URL of `resource` that the rules want
        fetched; nothing for a job's own update (its failed URLs stay as they are)."""
        if not self.rules.enabled or isinstance(ctx, JobContext):
            return  # a job's own update must not schedule again the URLs it left (failed ones)
        ref = f"{resource.get('resourceType')}/{resource.get('id')}"
        for _path, attachment in iter_attachments(resource):
            url = attachment.get("url")
            if "data" in attachment or not self.rules.wants(url):
                continue
            key = hashlib.sha256(f"{ref} {url}".encode()).hexdigest()
            try:
                await self.queue.enqueue(JOB_KIND, {"resource": ref, "url": url}, subject=ref, dedupe_key=key)
            except Exception:
                # The write itself is committed and must be answered as such; saving it again schedules anew.
                log.exception("could not schedule the ingestion of %s for %s", redacted(str(url)), ref)


class AttachmentIngestion:
    """The job: fetch the URL into a Binary whose securityContext is the source resource, then point every
    Attachment still holding that URL at the Binary, without ever overwriting a newer edit."""

    def __init__(self, resources: ResourceService, binaries: BinaryWriter | None, queue: JobQueue,
                 settings: Settings, fetcher: Fetcher | None = None) -> None:
        self.resources = resources
        self.binaries = binaries
        self.queue = queue
        self.rules = IngestionRules.from_settings(settings)
        self.scheduler = IngestionScheduler(queue, self.rules)
        self.base_url = settings.fhir_base_url
        self.total_timeout = settings.ingest_total_timeout
        self.fetcher = fetcher or Fetcher(
            FetchLimits(max_bytes=settings.max_binary_bytes, max_redirects=settings.ingest_max_redirects,
                        connect_timeout=settings.ingest_connect_timeout,
                        read_timeout=settings.ingest_read_timeout, total_timeout=settings.ingest_total_timeout),
            settings.ingest_allowed_hosts, allowed_prefixes=settings.ingest_allowed_prefixes)

    async def run(self, job: Job) -> dict[str, Any]:
        """Runs one fetch job: fetches the URL (SSRF-guarded, within the limits), stores the bytes as a Binary
        and points the Attachment at it in a new version of the resource, unless that Attachment
        changed meanwhile. Returns the job's result (the Binary reference); raises
        PermanentJobError for what retrying cannot fix."""
        ctx = job_context(self.base_url)
        ref, url = str(job.payload["resource"]), str(job.payload["url"])
        rtype, _, rid = ref.partition("/")
        source = await self._current(ctx, rtype, rid)
        if source is None:
            return {"outcome": "not applied: the resource was deleted"}
        holders = _holders(source[1], url)
        if not holders:
            return {"outcome": "not applied: the URL is no longer in the resource"}
        declared_type = holders[0].get("contentType")
        try:
            async with deadline(self.total_timeout, f"fetching {redacted(url)}"), \
                    self.fetcher.open(url) as response:
                # A type the remote server sent that could not be served again is not kept.
                content_type = next((str(t) for t in (response.content_type, declared_type) if is_media_type(t)),
                                    DEFAULT_CONTENT_TYPE)
                if self.binaries is None:
                    raise RuntimeError("Binary storage is not available in this process")
                created = await self.binaries.create_from_stream(
                    ctx, response.chunks(), content_type=content_type, security_context=ref,
                    filename=_file_name(response.url))
        except FetchRefused as exc:
            raise PermanentJobError(str(exc)) from None
        except TooLarge as exc:
            raise PermanentJobError(exc.message) from None
        except FhirVaultError as exc:
            raise RuntimeError(exc.message) from None
        binary_id = created.stored.id
        assert self.binaries is not None
        stored = await self.binaries.content(ctx, binary_id)
        version = await self._apply(ctx, rtype, rid, url, {
            "url": f"Binary/{binary_id}", "contentType": content_type, **attachment_size(stored.size),
            "hash": stored.sha1_b64})
        if version is None:
            # The URL was edited away (or the resource deleted) while we fetched: nothing points at the copy.
            await self.resources.delete(ctx, "Binary", binary_id)
            return {"outcome": "not applied: the URL was removed from the resource while it was fetched"}
        log.info("ingested %s into Binary/%s for %s", redacted(url), binary_id, ref)
        return {"outcome": "applied", "binary": f"Binary/{binary_id}", "size": stored.size,
                "contentType": content_type, "version": version}

    async def _current(self, ctx: RequestContext, rtype: str, rid: str) -> tuple[int, dict[str, Any]] | None:
        try:
            stored = await self.resources.read(ctx, rtype, rid)
        except (NotFound, Gone):
            return None
        assert stored.content is not None
        return stored.version_id, stored.content

    async def _apply(self, ctx: RequestContext, rtype: str, rid: str, url: str, fields: dict[str, Any]
                     ) -> int | None:
        """Set `fields` on every Attachment holding `url`, with If-Match on the version read; on a
        concurrent change read again and re-apply. The new version, or None when no Attachment holds it."""
        def change(body: dict[str, Any]) -> bool:
            holders = _holders(body, url)
            for attachment in holders:
                attachment.update(fields)
            return bool(holders)

        try:
            result = await self.resources.modify(ctx, rtype, rid, change)
        except (NotFound, Gone):
            return None
        return result.stored.version_id if result is not None else None

    async def status(self, ctx: RequestContext, rtype: str, rid: str) -> dict[str, Any]:
        """Parameters listing the ingestion jobs of a resource the caller may read (newest first)."""
        await self.resources.read(ctx, rtype, rid)
        jobs = await self.queue.list(subject=f"{rtype}/{rid}", kind=JOB_KIND, limit=1000)
        began = await self.resources.current_life_began(rtype, rid)
        parameters = []
        for job in jobs:
            if began is not None and job.created_at <= began:
                continue  # a job of the id's earlier life, before it was deleted
            part: list[dict[str, Any]] = [
                {"name": "url", "valueUrl": str(job.payload.get("url"))},
                {"name": "state", "valueCode": job.state},
                {"name": "attempts", "valueInteger": job.attempts},
            ]
            if job.last_error:
                # The detail (how a host resolved, whether a port answered) stays in the server log and
                # `fhirvault jobs list`: told to an API caller it would map the internal network.
                part.append({"name": "error", "valueString": FAILED_REASON if job.state == FAILED else RETRY_REASON})
            result = job.result or {}
            if result.get("outcome"):
                part.append({"name": "outcome", "valueString": result["outcome"]})
            if result.get("binary"):
                part.append({"name": "binary", "valueReference": {"reference": result["binary"]}})
            part.append({"name": "job", "valueId": job.id})
            parameters.append({"name": "job", "part": part})
        return {"resourceType": "Parameters", "parameter": parameters}


def _holders(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [a for _, a in iter_attachments(resource) if a.get("url") == url and "data" not in a]


def _file_name(url: str) -> str | None:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name if name and "." in name else None
