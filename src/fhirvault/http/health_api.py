"""`GET /healthz` (the process lives) and `GET /readyz` (it can serve), for load balancers; no token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.fhir.outcome import operation_outcome
from fhirvault.http.responses import FhirJsonResponse
from fhirvault.http.state import vault

HEALTH_PATHS = ("/healthz", "/readyz")


async def healthz(request: Request) -> Response:
    """200 whenever the process answers at all; it checks nothing else (restart on failure)."""
    return FhirJsonResponse(operation_outcome("alive", severity="information", code="informational"),
                            headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    """200 when the database and the blob store answer; 503 naming each part that does not (take the node
    out of rotation), with Retry-After."""
    failures = await vault(request).readiness.failures()
    if not failures:
        return FhirJsonResponse(operation_outcome("ready", severity="information", code="informational"),
                                headers={"Cache-Control": "no-store"})
    detail = "; ".join(f"{part}: {problem}" for part, problem in sorted(failures.items()))
    return FhirJsonResponse(operation_outcome(f"not ready: {detail}", code="transient"), 503,
                            headers={"Cache-Control": "no-store", "Retry-After": "5"})
