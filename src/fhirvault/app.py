"""Builds the ASGI application from Settings: owns the database, the stores and the use cases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from fhirvault import __version__
from fhirvault.blobs.factory import open_blob_store
from fhirvault.config import Settings
from fhirvault.errors import FhirVaultError
from fhirvault.fhir.capability import capability_statement
from fhirvault.http import binary_api, fhir_api, oauth_api
from fhirvault.http.auth import BearerAuthMiddleware
from fhirvault.http.responses import error_response, outcome_response
from fhirvault.security.clients import ClientStore
from fhirvault.security.keys import KeyRing
from fhirvault.security.policy import ScopePolicy
from fhirvault.security.tokens import TokenService
from fhirvault.service.binaries import BinaryService
from fhirvault.service.bundles import BundleService
from fhirvault.service.inline_data import InlineDataLimit
from fhirvault.service.resources import ResourceService
from fhirvault.service.timeutil import now_us, to_instant
from fhirvault.store.blobs import BlobRegistry
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
        self.clients = ClientStore(self.db, settings.auth_failure_limit, settings.auth_failure_window)
        self.tokens = TokenService(KeyRing(self.db), self.clients, issuer=settings.public_base_url,
                                   audience=settings.fhir_base_url, lifetime=settings.token_lifetime)
        self.resources = ResourceService(self.db, self.store, ScopePolicy(self.store))
        self.bundles = BundleService(self.resources)
        self.blob_store = open_blob_store(settings, self.db)
        self.blob_registry = BlobRegistry()
        self.binaries = BinaryService(
            self.db, self.resources, self.blob_store, self.blob_registry,
            inline_max_bytes=settings.inline_max_bytes, max_binary_bytes=settings.max_binary_bytes,
            pending_grace_seconds=settings.pending_blob_grace_seconds)
        self.resources.write_hooks.append(
            InlineDataLimit(self.resources, self.blob_store, self.blob_registry, settings.inline_max_bytes))
        self._capability: dict[str, Any] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.db.migrate()
        self._sweeper = asyncio.create_task(self._sweep_pending_blobs())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.blob_store is not None:
            await self.blob_store.close()
        await self.db.close()

    async def _sweep_pending_blobs(self) -> None:
        """Remove the leftovers of uploads that died, now and then (every node may; the work is idempotent)."""
        interval = max(1.0, min(300.0, self.settings.pending_blob_grace_seconds / 4))
        while True:
            try:
                removed = await self.binaries.sweep()
                if removed:
                    log.info("swept %d pending blobs older than %ds", removed,
                             self.settings.pending_blob_grace_seconds)
            except Exception:
                log.exception("sweeping pending blobs failed; will retry")
            await asyncio.sleep(interval)

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
        # Binary's own routes first: they take precedence over the generic /{rtype} ones.
        routes=oauth_api.routes(FHIR_PREFIX) + binary_api.routes(FHIR_PREFIX) + fhir_api.routes(FHIR_PREFIX),
        middleware=[Middleware(BearerAuthMiddleware, tokens=vault.tokens, base_url=settings.fhir_base_url)],
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
