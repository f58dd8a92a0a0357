"""Builds the ASGI application from Settings: owns the database, the stores and the use cases."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fhirvault import __version__
from fhirvault.config import Settings
from fhirvault.errors import FhirVaultError
from fhirvault.fhir.capability import capability_statement
from fhirvault.http import fhir_api, ingestion_api
from fhirvault.http.responses import error_response, outcome_response
from fhirvault.jobs.queue import JobQueue
from fhirvault.jobs.worker import JobWorkers
from fhirvault.service.bundles import BundleService
from fhirvault.service.ingestion import JOB_KIND as INGEST_JOB
from fhirvault.service.ingestion import AttachmentIngestion
from fhirvault.service.resources import ResourceService
from fhirvault.service.timeutil import now_us, to_instant
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore

log = logging.getLogger("fhirvault")

FHIR_PREFIX = "/fhir/R4"


class FhirVault:
    """The parts of one server process, wired together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url)
        self.store = ResourceStore()
        self.resources = ResourceService(self.db, self.store)
        self.bundles = BundleService(self.resources)
        self.jobs = JobQueue(self.db, max_attempts=settings.ingest_max_attempts,
                             backoff_seconds=settings.ingest_backoff_seconds,
                             lease_seconds=settings.job_lease_seconds)
        self.ingestion = AttachmentIngestion(self.resources, getattr(self, "binaries", None), self.jobs, settings)
        self.resources.after_commit_hooks.append(self.ingestion.scheduler)
        self.workers = JobWorkers(self.jobs, {INGEST_JOB: self.ingestion.run}, count=settings.job_workers)
        self._capability: dict[str, Any] | None = None

    async def start(self) -> None:
        await self.db.migrate()
        self.workers.start()

    async def stop(self) -> None:
        await self.workers.stop()
        await self.db.close()

    def capability_statement(self) -> dict[str, Any]:
        if self._capability is None:
            self._capability = capability_statement(
                self.settings.fhir_base_url, __version__, to_instant(now_us()))
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


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return outcome_response(500, "The server failed to process the request; the error was logged", "exception")


def build_app(settings: Settings) -> Starlette:
    vault = FhirVault(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await vault.start()
        try:
            yield
        finally:
            await vault.stop()

    app = Starlette(
        routes=ingestion_api.routes(FHIR_PREFIX) + fhir_api.routes(FHIR_PREFIX),
        exception_handlers={
            FhirVaultError: _domain_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.vault = vault
    return app


def app_from_environment() -> Starlette:
    """uvicorn factory for worker processes: Settings come from the FHIRVAULT_ environment."""
    return build_app(Settings())
