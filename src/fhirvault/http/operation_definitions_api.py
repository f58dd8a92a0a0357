"""HTTP edge of conformance resource reads (OperationDefinition, StructureDefinition, SearchParameter): the
server's own definitions come from code, others from storage."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.fhir.subsetting import subset
from fhirvault.http import fhir_api
from fhirvault.http.fhir_api import READ_PARAMS, check_query, subsetting_params, vault
from fhirvault.http.responses import FhirJsonResponse


async def read(request: Request) -> Response:
    """GET /{type}/{id} of a conformance type: one of the server's own definitions, else a stored one."""
    rtype = request.path_params["rtype"]
    builtin = vault(request).builtin_resource(rtype, request.path_params["rid"])
    if builtin is None:
        return await fhir_api.read_resource(request, rtype)
    check_query(request, READ_PARAMS, "read")
    summary, elements = subsetting_params(request)
    return FhirJsonResponse(subset(builtin, summary, elements))
