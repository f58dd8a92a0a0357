"""The fhirvault Python client: `FhirClient` (sync) and `AsyncFhirClient` (async), for fhirvault and
any standards-following FHIR R4 server.

HTTP library: httpx. It offers a synchronous and an asynchronous client with one API, streams
request bodies from (async) iterators and response bodies chunk by chunk, is maintained and typed,
and is already a dependency of fhirvault (requests has no async side; aiohttp no sync side).

Sync and async share everything but the I/O: each FHIR interaction is written once in
`operations.py` as a generator that yields the HTTP calls it needs and receives their replies
(`exchange.py`). Each client is a thin driver that runs those generators on its own httpx client
and applies the same rules (token only to the FHIR base, redirects, one token renewal on 401).
"""

from fhirvault.client.async_client import AsyncFhirClient
from fhirvault.client.auth import ClientCredentials, FixedToken, TokenSource
from fhirvault.client.direct_upload import DirectUploadNotOffered
from fhirvault.client.errors import (
    ConflictError,
    FhirError,
    ForbiddenError,
    GoneError,
    IntegrityError,
    InvalidError,
    NotFoundError,
    PreconditionFailedError,
    UnauthorizedError,
)
from fhirvault.client.sync_client import FhirClient

__all__ = [
    "AsyncFhirClient", "ClientCredentials", "ConflictError", "DirectUploadNotOffered", "FhirClient", "FhirError",
    "FixedToken",
    "ForbiddenError", "GoneError", "IntegrityError", "InvalidError", "NotFoundError", "PreconditionFailedError",
    "TokenSource", "UnauthorizedError",
]
