"""FHIR JSON responses and OperationOutcome errors."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from fhirvault import jsoncodec
from fhirvault.errors import FhirVaultError
from fhirvault.fhir.outcome import operation_outcome
from fhirvault.http.negotiation import FHIR_JSON

FHIR_CONTENT_TYPE = f"{FHIR_JSON}; charset=utf-8"


class FhirJsonResponse(Response):
    """A response whose body is FHIR JSON (application/fhir+json; fhirVersion=4.0), rendered with orjson; a
    `bytes` body is sent as is."""

    media_type = FHIR_CONTENT_TYPE

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(content, status_code, headers)

    def render(self, content: Any) -> bytes:
        """`content` as JSON; bytes are taken as JSON already encoded (a cached answer)."""
        if content is None:
            return b""
        if isinstance(content, bytes):
            return content
        return jsoncodec.dumps(content)


def outcome_response(status: int, message: str, code: str = "processing",
                     headers: dict[str, str] | None = None, expression: str | None = None) -> FhirJsonResponse:
    """A response of `status` carrying one OperationOutcome issue with `message`, issue `code` and, when
    given, the FHIRPath `expression` of the element concerned."""
    return FhirJsonResponse(operation_outcome(message, code=code, expression=expression), status, headers)


def error_response(exc: FhirVaultError) -> FhirJsonResponse:
    """The response for a domain error: its status, its headers (e.g. Retry-After, WWW-Authenticate), and an
    OperationOutcome of its issues or of its one message."""
    headers: dict[str, str] = {}
    extra = getattr(exc, "headers", None)
    if isinstance(extra, dict):
        headers.update(extra)
    if exc.issues:
        return FhirJsonResponse({"resourceType": "OperationOutcome", "issue": exc.issues}, exc.status, headers)
    return outcome_response(exc.status, exc.message, exc.code, headers, exc.expression)
