"""The service layer's public face: the use cases of one server process, as the HTTP edge sees them."""

from __future__ import annotations

from typing import Any, Protocol

from fhirvault.config import Settings
from fhirvault.security.clients import ClientStore
from fhirvault.security.tokens import TokenService
from fhirvault.security.url_signing import SignedUrl
from fhirvault.service.binaries import BinaryService
from fhirvault.service.binary_access import BinaryAccess
from fhirvault.service.bundles import BundleService
from fhirvault.service.direct_uploads import DirectUploadService
from fhirvault.service.health import Readiness
from fhirvault.service.ingestion import AttachmentIngestion
from fhirvault.service.resources import ResourceService
from fhirvault.service.scans import ContentScans
from fhirvault.service.storage_downloads import StorageDownloads
from fhirvault.service.uploads import UploadService
from fhirvault.service.validate_operation import ValidateOperation
from fhirvault.store.resources import StoredResource as StoredResource  # what reads and writes return


class Services(Protocol):
    """Everything a request handler may call; `fhirvault.app.FhirVault` is the implementation.

    The authentication parts (`clients`, `tokens`, `signed_urls`) are the security layer's own faces:
    the token endpoint and the storage URLs use them before any use case runs."""

    settings: Settings
    resources: ResourceService
    bundles: BundleService
    validate: ValidateOperation
    binaries: BinaryService
    binary_access: BinaryAccess
    uploads: UploadService
    direct_uploads: DirectUploadService
    storage: StorageDownloads
    ingestion: AttachmentIngestion
    clients: ClientStore
    tokens: TokenService
    signed_urls: SignedUrl
    readiness: Readiness
    scans: ContentScans

    def capability_statement(self) -> dict[str, Any]:
        """The CapabilityStatement served at /metadata (FHIR R4 capabilitystatement.html)."""
        ...

    def capability_statement_json(self) -> bytes:
        """The same CapabilityStatement as UTF-8 JSON, encoded once per process."""
        ...

    def capability_statement_gzip(self) -> bytes:
        """`capability_statement_json` compressed with gzip (RFC 1952), once per process."""
        ...

    def capability_statement_subset(self, summary: str | None, elements: list[str] | None) -> tuple[bytes, bytes]:
        """The CapabilityStatement cut down by `_summary` / `_elements`, as (UTF-8 JSON, the same gzipped)."""
        ...

    def operation_definitions(self) -> dict[str, dict[str, Any]]:
        """The server's own OperationDefinitions by id."""
        ...

    def builtin_resource(self, rtype: str, rid: str) -> dict[str, Any] | None:
        """One of the server's own conformance resources of type `rtype` and id `rid`, or None."""
        ...
