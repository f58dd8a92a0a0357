"""Reading request bodies with a size bound."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from fhirvault import jsoncodec
from fhirvault.errors import Invalid, TooLarge, Unsupported
from fhirvault.fhir.patch import FHIRPATH_PATCH, JSON_PATCH, MERGE_PATCH, PatchDocument
from fhirvault.fhir.r4 import whole_number
from fhirvault.http.negotiation import charset_is_utf8, is_fhir_json, media_type, speaks_fhir_version

JSON_PATCH_TYPE = "application/json-patch+json"
MERGE_PATCH_TYPE = "application/merge-patch+json"


async def read_body_bounded(request: Request, limit: int, what: str) -> bytes:
    """The whole request body (already decoded from its content coding), refusing with TooLarge as soon as a
    declared Content-Length or the bytes received exceed `limit` bytes; `what` names the body in the
    message."""
    declared = request.headers.get("content-length")
    if declared and (whole_number(declared) or 0) > limit:
        raise TooLarge(f"{what} of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body, strictly (see `jsoncodec.loads_strict`); Invalid (400) for
    anything that could not be written back out as valid JSON: not UTF-8, bad syntax, NaN/Infinity, a
    property given twice in one object, over-deep nesting, lone surrogates, NUL characters."""
    try:
        return jsoncodec.loads_strict(raw)
    except jsoncodec.StrictJsonError as exc:
        raise Invalid(str(exc)) from None


async def read_fhir_json(request: Request, limit: int) -> Any:
    """The request body as JSON; a Content-Type other than FHIR JSON R4 raises Unsupported (415)."""
    ctype = request.headers.get("content-type")
    if ctype and not is_fhir_json(ctype):
        raise Unsupported(
            f"Content-Type '{media_type(ctype)}' is not supported here; send application/fhir+json")
    _check_fhir_version(ctype)
    return await _read_json(request, limit)


def _check_fhir_version(ctype: str | None) -> None:
    if not speaks_fhir_version(ctype):
        raise Unsupported(f"Content-Type '{ctype}' names another FHIR version; this server speaks fhirVersion=4.0")
    require_utf8(ctype)


def require_utf8(ctype: str | None) -> None:
    """Unsupported (415) for a text body (FHIR JSON, a patch, a form) whose Content-Type names a charset
    other than UTF-8: FHIR JSON is UTF-8 (R4 http.html#mime-type, RFC 8259 8.1), and reading such a body as
    UTF-8 anyway would store other text than was sent. Raw content (Binary) keeps its type as data instead."""
    if not charset_is_utf8(ctype):
        raise Unsupported(f"Content-Type '{ctype}' names a charset other than UTF-8; send the body as UTF-8 "
                          "(charset=utf-8, or no charset)")


async def _read_json(request: Request, limit: int) -> Any:
    raw = await read_body_bounded(request, limit, "The JSON body")
    if not raw.strip():
        raise Invalid("The request body is empty; a FHIR resource was expected")
    return parse_json(raw)


async def read_patch_document(request: Request, limit: int) -> PatchDocument:
    """A PATCH body by its Content-Type (R4 http.html#patch).

    application/json-patch+json: JSON Patch (RFC 6902); application/merge-patch+json: JSON Merge Patch
    (RFC 7386); FHIR JSON (application/fhir+json, application/json, none): a Parameters resource is a
    FHIRPath Patch, an array a JSON Patch, any other object a merge patch (what fhirpy's `patch()`
    sends). Anything else raises Unsupported (415).
    """
    ctype = request.headers.get("content-type")
    kind = media_type(ctype)
    if kind not in (JSON_PATCH_TYPE, MERGE_PATCH_TYPE) and ctype and not is_fhir_json(ctype):
        raise Unsupported(f"Content-Type '{kind}' is not a patch format this server applies; send "
                          f"{JSON_PATCH_TYPE}, {MERGE_PATCH_TYPE}, or application/fhir+json (a FHIRPath Patch "
                          "Parameters resource)")
    _check_fhir_version(ctype)
    body = await _read_json(request, limit)
    if kind == JSON_PATCH_TYPE or (kind != MERGE_PATCH_TYPE and isinstance(body, list)):
        return PatchDocument(JSON_PATCH, body)
    if kind != MERGE_PATCH_TYPE and isinstance(body, dict) and body.get("resourceType") == "Parameters":
        return PatchDocument(FHIRPATH_PATCH, body)
    return PatchDocument(MERGE_PATCH, body)


def header_as_utf8(value: str) -> str | None:
    """A header value re-read as UTF-8: HTTP gives header bytes to the application as Latin-1 (RFC 9110
    5.5), but clients send raw UTF-8 in criteria and file names (`family=Zoëx`, `filename="Müller.pdf"`).
    None when those bytes are not UTF-8; an ASCII value as it is."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None

