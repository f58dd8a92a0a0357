"""Builds the ASGI application from Settings: owns the database, the stores and the use cases."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from fhirvault import __version__, jsoncodec
from fhirvault.blobs.database import DatabaseBlobStore
from fhirvault.blobs.factory import open_blob_store
from fhirvault.clock import now_us
from fhirvault.config import Settings
from fhirvault.errors import FhirVaultError
from fhirvault.fhir import scan_definitions, validation
from fhirvault.fhir.capability import capability_statement
from fhirvault.fhir.operation_definitions import applies_to, builtin_operation_definitions
from fhirvault.fhir.r4 import resource_types
from fhirvault.fhir.subsetting import subset
from fhirvault.heap import settle_heap
from fhirvault.http import routes as http_routes
from fhirvault.http.access_log import RedactSignatures
from fhirvault.http.auth import FHIR_PREFIX, BearerAuthMiddleware
from fhirvault.http.content_encoding import ContentDecodingMiddleware
from fhirvault.http.cors import ApiCors, parse_origins
from fhirvault.http.formats import FhirFormatMiddleware
from fhirvault.http.responses import error_response, outcome_response
from fhirvault.http.unexpected_errors import UnexpectedErrors
from fhirvault.jobs.clamd import ClamdScanner
from fhirvault.jobs.queue import JobQueue
from fhirvault.jobs.worker import JobWorkers
from fhirvault.security.clients import ClientStore
from fhirvault.security.keys import KeyRing
from fhirvault.security.policy import ScopePolicy
from fhirvault.security.tokens import TokenService
from fhirvault.security.url_signing import SignedUrl
from fhirvault.service.attachments import AttachmentNormalizer, AttachmentUrlSigner, UrlShapes
from fhirvault.service.binaries import BinaryService
from fhirvault.service.binary_access import BinaryAccess
from fhirvault.service.bundles import BundleService
from fhirvault.service.direct_uploads import DirectUploadService
from fhirvault.service.health import Readiness
from fhirvault.service.ingestion import JOB_KIND as INGEST_JOB
from fhirvault.service.ingestion import AttachmentIngestion
from fhirvault.service.inline_data import InlineDataMover
from fhirvault.service.pipelines import ReadPipeline, WritePipeline
from fhirvault.service.reindex import Reindexer
from fhirvault.service.resources import ResourceService
from fhirvault.service.scans import JOB_KIND as SCAN_JOB
from fhirvault.service.scans import ContentScans
from fhirvault.service.search_parse import SCAN_STATUS_PARAM
from fhirvault.service.services import Services
from fhirvault.service.storage_downloads import StorageDownloads
from fhirvault.service.timeutil import to_instant
from fhirvault.service.uploads import UploadService
from fhirvault.service.validate_operation import ValidateOperation
from fhirvault.service.validation import R4Validation
from fhirvault.store.blobs import BlobRegistry
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore

log = logging.getLogger("fhirvault")
# Least seconds between two refreshes of the planner's statistics, however fast writes make them due: each
# is a catalog query, and an ANALYZE of what changed.
STATISTICS_GAP_SECONDS = 1.0
# How long a look at the statistics that writes made due keeps looking again while PostgreSQL's counters do
# not show those writes yet (a session reports them within ten seconds of going idle).
STATISTICS_LAG_SECONDS = 12.0


class FhirVault:
    """The parts of one server process, wired together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, pool_size=settings.database_pool_size,
                           max_overflow=settings.database_max_overflow)
        self.blob_registry = BlobRegistry()
        self.store = ResourceStore(self.blob_registry, text_index=settings.search_text_index,
                                   validated=settings.validation_enabled)
        self.clients = ClientStore(self.db, settings.auth_failure_limit, settings.auth_failure_window)
        self.tokens = TokenService(KeyRing(self.db), self.clients, issuer=settings.public_base_url,
                                   audience=settings.fhir_base_url, lifetime=settings.token_lifetime)
        self.resources = ResourceService(self.db, self.store, ScopePolicy(self.store),
                                         conditional_delete_max=settings.conditional_delete_max)
        self.validate = ValidateOperation(self.resources)
        self.blob_store = open_blob_store(settings, self.db)
        # Resumable uploads stage their bytes in the blob store; in inline mode, which has none, in the
        # database's chunk table, until the finished content goes into its resource.
        staging_store = self.blob_store or DatabaseBlobStore(self.db)
        self.binaries = BinaryService(
            self.db, self.resources, self.store, self.blob_store, self.blob_registry,
            inline_max_bytes=settings.inline_max_bytes, max_binary_bytes=settings.max_binary_bytes,
            pending_grace_seconds=settings.pending_blob_grace_seconds, dedup=settings.dedup_enabled,
            staging_store=staging_store)
        self.bundles = BundleService(self.resources, self.binaries)
        self.uploads = UploadService(self.db, self.binaries, staging_store, self.blob_registry,
                                     max_bytes=settings.max_binary_bytes,
                                     expiry_seconds=settings.upload_expiry_seconds)
        self.direct_uploads = DirectUploadService(
            self.db, self.binaries, self.blob_store, self.blob_registry, ttl_seconds=settings.direct_upload_ttl,
            part_bytes=settings.direct_upload_part_bytes, grace_seconds=settings.pending_blob_grace_seconds)
        self.signed_urls = SignedUrl(self.db, settings.storage_base_url, settings.signed_url_ttl,
                                     settings.signed_url_window, also_accepted=(settings.public_base_url,))
        self.jobs = JobQueue(self.db, max_attempts=settings.ingest_max_attempts,
                             backoff_seconds=settings.ingest_backoff_seconds,
                             lease_seconds=settings.job_lease_seconds)
        self.ingestion = AttachmentIngestion(self.resources, self.binaries, self.jobs, settings)
        self.jobs.set_retry_policy(SCAN_JOB, max_attempts=settings.scan_max_attempts,
                                   backoff_seconds=settings.scan_backoff_seconds)
        self.scans = ContentScans(
            self.db, self.store, self.blob_registry, self.blob_store, self.jobs,
            ClamdScanner(settings.scan_clamd_url, settings.scan_timeout_seconds) if settings.scan_mode != "off"
            else None,
            mode=settings.scan_mode, max_bytes=settings.scan_max_bytes, fhir_base_url=settings.fhir_base_url)
        # The steps every resource passes; their order is fixed in service/pipelines.py.
        self.resources.write_pipeline = WritePipeline(
            validate=R4Validation() if settings.validation_enabled else None,
            move_inline_data=InlineDataMover(self.resources, self.binaries, settings.inline_max_bytes),
            normalize_attachment_urls=AttachmentNormalizer(
                self.resources.access, UrlShapes(settings.fhir_base_url, self.signed_urls)),
            record_content_scans=self.scans if settings.scan_mode != "off" else None,
            schedule_ingestion=self.ingestion.scheduler)
        self.resources.read_pipeline = ReadPipeline(
            sign_attachment_urls=AttachmentUrlSigner(self.db, self.resources.access, self.signed_urls)
            if settings.rewrite_attachment_urls else None,
            show_scan_status=self.scans)
        self.storage = StorageDownloads(self.binaries, self.blob_store, self.signed_urls, settings.fhir_base_url)
        self.workers = JobWorkers(self.jobs, {INGEST_JOB: self.ingestion.run, SCAN_JOB: self.scans.run},
                                  count=settings.job_workers,
                                  grace_seconds=settings.shutdown_timeout_seconds)
        self.readiness = Readiness(self.db, self.blob_store)
        self.binary_access = BinaryAccess(self.resources, self.binaries)
        self.reindexer = Reindexer(self.db, settings.fhir_base_url, text=settings.search_text_index)
        self._capability: dict[str, Any] | None = None
        self._capability_json: bytes | None = None
        self._capability_gzip: bytes | None = None
        self._capability_subsets: dict[tuple[str | None, tuple[str, ...] | None], tuple[bytes, bytes]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._statistician: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts the server's parts in one process: warms the validator, migrates the database, indexes
        resources the search index lacks, loads the key rings, and starts the job workers and the
        blob sweeper. Raises what the database or the store raise when they are not available."""
        if self.settings.validation_enabled:
            # Compiling the R4 schema takes about a second: done at start, not on the first write.
            await asyncio.to_thread(validation.warm_up)
        await self.db.migrate()
        # Resources stored before the search index existed (or marked by `fhirvault reindex`) are
        # indexed before the first request, so that no search answers from a partial index.
        await self.reindexer.run()
        await self.db.refresh_statistics()
        self._sweeper = asyncio.create_task(self._sweep_pending_blobs())
        self._statistician = asyncio.create_task(self._keep_statistics())
        if self.db.is_sqlite:
            self._checkpointer = asyncio.create_task(self._checkpoint_wal())
        self.workers.start()

    async def stop(self) -> None:
        """Running jobs get the shutdown timeout to finish; those that do not are handed back to the queue."""
        self.readiness.stopping = True
        await self.workers.stop()
        await self.binaries.settled()
        for task in (self._sweeper, self._statistician, self._checkpointer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.blob_store is not None:
            await self.blob_store.close()
        await self.db.close()

    async def _keep_statistics(self) -> None:
        """The query planner's statistics follow the data as it grows: refreshed every
        Database.statistics_seconds, or as soon as enough writes made them due (Database.statistics_due),
        at most once per STATISTICS_GAP_SECONDS (searches are planned from them; see refresh_statistics).
        PostgreSQL learns of a session's writes only when that session reports them, up to ten seconds
        after its commit: a look the writes made due that finds nothing to analyze looks again, once per
        gap, for STATISTICS_LAG_SECONDS."""
        looks_left = 0
        while True:
            due = True
            try:
                await asyncio.wait_for(self.db.statistics_due.wait(), timeout=self.db.statistics_seconds)
            except TimeoutError:
                due = False
            try:
                analyzed = await self.db.refresh_statistics()
            except Exception as exc:  # noqa: BLE001 - the database is away; the next round retries
                log.warning("refreshing the planner's statistics failed (%s); will retry", exc)
                analyzed = 0
            if analyzed:
                looks_left = 0
            elif due or looks_left:
                looks_left = looks_left - 1 if looks_left else int(STATISTICS_LAG_SECONDS / STATISTICS_GAP_SECONDS)
                if looks_left:
                    self.db.statistics_due.set()
            await asyncio.sleep(STATISTICS_GAP_SECONDS)

    async def _checkpoint_wal(self) -> None:
        """SQLite: the write-ahead log is copied back into the database every SQLITE_CHECKPOINT_SECONDS (a
        setting) by this task (in the connection's thread, beside the requests), rather than by whichever commit fills
        it: such a commit copied thousands of pages before it could answer (store/database.py)."""
        while True:
            await asyncio.sleep(self.settings.sqlite_checkpoint_seconds)
            try:
                await self.db.checkpoint()
            except Exception as exc:  # noqa: BLE001 - the next round retries; commits still checkpoint too
                log.warning("checkpointing the SQLite write-ahead log failed (%s); will retry", exc)

    async def _sweep_pending_blobs(self) -> None:
        """Remove the leftovers of uploads that died, now and then (every node may; the work is idempotent):
        stale pending and released blobs each pass, ownerless bytes in the store every LEFTOVER_SCAN_SECONDS."""
        interval = max(1.0, min(300.0, self.settings.pending_blob_grace_seconds / 4,
                                self.settings.upload_expiry_seconds / 4))
        last_scan = float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            try:
                expired = await self.uploads.sweep_expired()
                if expired:
                    log.info("removed %d expired resumable uploads", expired)
                removed = await self.direct_uploads.sweep()
                if removed:
                    log.info("removed %d expired direct uploads", removed)
                removed = await self.binaries.sweep()
                if removed:
                    log.info("swept %d released or stale pending blobs", removed)
                if loop.time() - last_scan >= self.settings.leftover_scan_seconds:
                    last_scan = loop.time()
                    removed = await self.binaries.sweep_leftovers()
                    if removed:
                        log.info("removed the bytes of %d keys no blob owns", removed)
            except Exception as exc:  # noqa: BLE001 - the database or store is away; the next pass retries
                log.warning("sweeping blobs failed (%s); will retry", exc)
            await asyncio.sleep(interval)

    def operation_definitions(self) -> dict[str, dict[str, Any]]:
        """The OperationDefinitions this server implements, by id (see fhir.operation_definitions)."""
        return builtin_operation_definitions(self.settings.fhir_base_url,
                                             direct_uploads=self.direct_uploads.offered)

    def builtin_resource(self, rtype: str, rid: str) -> dict[str, Any] | None:
        """One of the server's own conformance resources (OperationDefinitions, the scan-status
        StructureDefinition and SearchParameter), or None."""
        base = self.settings.fhir_base_url
        if rtype == "OperationDefinition":
            return self.operation_definitions().get(rid)
        if rtype == "StructureDefinition" and rid == scan_definitions.EXTENSION_ID:
            return scan_definitions.scan_status_extension(base)
        if rtype == "SearchParameter" and rid == scan_definitions.SEARCH_PARAMETER_ID:
            return scan_definitions.scan_status_search_parameter(base)
        return None

    def capability_statement_json(self) -> bytes:
        """The CapabilityStatement encoded once: it never changes while the process runs."""
        if self._capability_json is None:
            self._capability_json = jsoncodec.dumps(self.capability_statement())
        return self._capability_json

    def capability_statement_gzip(self) -> bytes:
        """The encoded CapabilityStatement compressed once (about 750 KB of JSON become about 40 KB)."""
        if self._capability_gzip is None:
            self._capability_gzip = gzip.compress(self.capability_statement_json(), compresslevel=9, mtime=0)
        return self._capability_gzip

    def capability_statement_subset(self, summary: str | None, elements: list[str] | None) -> tuple[bytes, bytes]:
        """The CapabilityStatement cut down by `_summary` / `_elements` (fhir.subsetting.subset), as JSON and
        gzip-compressed; the last 32 such answers are kept, since each takes about 20 ms to build."""
        key = (summary, tuple(elements) if elements else None)
        hit = self._capability_subsets.get(key)
        if hit is None:
            body = jsoncodec.dumps(subset(self.capability_statement(), summary, elements))
            hit = (body, gzip.compress(body, compresslevel=6, mtime=0))
            if len(self._capability_subsets) >= 32:
                self._capability_subsets.pop(next(iter(self._capability_subsets)))
            self._capability_subsets[key] = hit
        return hit

    def capability_statement(self) -> dict[str, Any]:
        """The server's CapabilityStatement (R4 CapabilityStatement, kind instance): every resource type with
        its interactions, search parameters, operations and the OAuth2 security service; built once
        per process."""
        if self._capability is None:
            base = self.settings.fhir_base_url
            definitions = list(self.operation_definitions().values())
            media_doc = ("GET /Media/{id} returns the raw content (with ranges) when Accept equals "
                         "Media.content.contentType or with _output=data; an Accept that admits FHIR JSON gives the "
                         "resource, any other 406."
                         if self.settings.media_raw_enabled else "")
            self._capability = capability_statement(
                base, __version__, to_instant(now_us()),
                extra_rest={"security": {
                    "cors": bool(parse_origins(self.settings.cors_origins)),
                    "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                             "code": "SMART-on-FHIR"}]}],
                    "extension": [{
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [{"url": "token", "valueUri": f"{self.settings.public_base_url}/oauth2/token"}],
                    }],
                    "description": "OAuth2 client credentials (SMART backend services scopes); bearer token "
                                   "required everywhere but /metadata, the token endpoint and signed /storage URLs.",
                }},
                operations_by_type={rtype: [{"name": d["code"], "definition": d["url"]} for d in definitions
                                            if applies_to(d, rtype)] for rtype in resource_types()},
                type_documentation={**({"Media": media_doc} if media_doc else {}), "Binary": (
                    f"Resumable uploads: tus 1.0 (Core, creation, creation-with-upload, expiration, checksum "
                    f"sha1/sha256, termination) at {base}/Binary/$upload, with the token and scopes of a Binary "
                    "create; Upload-Metadata keys contentType, filename, securityContext. The finished "
                    "upload's Binary id is in the X-Binary-Id header.")},
                conditional_delete_max=self.settings.conditional_delete_max,
                text_search=self.settings.search_text_index,
                custom_search_params={"Binary": [{
                    "name": SCAN_STATUS_PARAM, "definition": scan_definitions.search_parameter_url(base),
                    "type": "token",
                    "documentation": "The malware scan verdict on the Binary's content: pending | clean | infected | "
                                     "error | skipped (SCAN_MODE; the extension "
                                     f"{scan_definitions.extension_url(base)} on Binary.meta shows it)"}]})
        return self._capability


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirVaultError)
    if exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return outcome_response(404, f"No such endpoint: {request.method} {request.url.path}", "not-found")
    if exc.status_code == 405:
        return outcome_response(405, f"{request.method} is not allowed on {request.url.path}", "not-supported",
                                headers=dict(exc.headers or {}))
    return outcome_response(exc.status_code, str(exc.detail), "processing")


def build_app(settings: Settings) -> Starlette:
    """The ASGI application for `settings`: the FhirVault parts, the routes of http.routes, the middleware
    (content codings, formats, limits) and the error handlers that turn every failure into an
    OperationOutcome."""
    vault = FhirVault(settings)
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSignatures) for f in access_log.filters):
        access_log.addFilter(RedactSignatures())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await vault.start()
        settle_heap()
        try:
            yield
        finally:
            await vault.stop()

    origins = parse_origins(settings.cors_origins)
    # CORS outermost: preflights carry no token, and errors (401 included) must be readable by the browser app
    cors = [Middleware(ApiCors, origins=origins)] if origins else []
    app = Starlette(
        routes=http_routes.routes(),
        middleware=[*cors,
                    Middleware(UnexpectedErrors),
                    Middleware(BearerAuthMiddleware, tokens=vault.tokens, base_url=settings.fhir_base_url),
                    Middleware(FhirFormatMiddleware, prefix=FHIR_PREFIX),
                    Middleware(ContentDecodingMiddleware,
                               limit=max(settings.max_binary_bytes, settings.max_json_bytes))],
        exception_handlers={
            FhirVaultError: _domain_error,
            HTTPException: _http_error,  # any other exception: UnexpectedErrors
        },
        lifespan=lifespan,
    )
    services: Services = vault  # mypy checks here that FhirVault offers what the handlers call
    app.state.vault = services
    return app


def app_from_environment() -> Starlette:
    """uvicorn factory for worker processes: Settings come from the FHIRVAULT_ environment."""
    return build_app(Settings())
