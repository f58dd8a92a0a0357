"""The `$ingestion-status` operation: the external-URL ingestion jobs of one resource, as Parameters."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.http.fhir_api import context, resource_type_of, vault
from fhirvault.http.responses import FhirJsonResponse


async def ingestion_status(request: Request) -> Response:
    """GET [type]/[id]/$ingestion-status: a Parameters resource listing the fetch jobs of the resource's
    Attachment URLs (url, state, attempts, outcome), newest first."""
    rtype = resource_type_of(request)
    v = vault(request)
    return FhirJsonResponse(await v.ingestion.status(context(request), rtype, request.path_params["rid"]))
