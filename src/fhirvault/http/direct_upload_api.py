"""HTTP edge of direct uploads to the object store: `Binary/$upload-url` and `Binary/$upload-complete`
(Parameters in; Parameters out, or the created Binary)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhirvault.errors import Invalid
from fhirvault.http.binary_api import written
from fhirvault.http.disposition import safe_filename
from fhirvault.http.fhir_api import context
from fhirvault.http.requests import read_fhir_json
from fhirvault.http.responses import FhirJsonResponse
from fhirvault.http.state import vault
from fhirvault.service.direct_uploads import DirectUpload, UploadRequest
from fhirvault.service.timeutil import to_instant

PARAMETERS_LIMIT = 64 * 1024
# Query parameters every FHIR request may carry (handled by FhirFormatMiddleware); any other is refused.
_GENERAL_QUERY = {"_format", "_pretty"}
# The value[x] each input parameter may come in, by parameter name.
_UPLOAD_URL_INPUTS: dict[str, tuple[str, ...]] = {
    "contentType": ("valueCode", "valueString"),
    "size": ("valueDecimal", "valueInteger", "valueUnsignedInt", "valuePositiveInt"),
    "sha256": ("valueBase64Binary", "valueString"),
    "securityContext": ("valueReference", "valueString"),
    "filename": ("valueString",),
}
_UPLOAD_COMPLETE_INPUTS: dict[str, tuple[str, ...]] = {"upload": ("valueString", "valueId")}


async def upload_url(request: Request) -> Response:
    """`POST Binary/$upload-url`: presigned PUT URLs for a direct upload, as a Parameters resource."""
    v = vault(request)
    ctx = context(request)
    v.direct_uploads.require_offered()
    values = await _inputs(request, "$upload-url", _UPLOAD_URL_INPUTS)
    for required in ("contentType", "size"):
        if required not in values:
            raise Invalid(f"$upload-url needs the parameter '{required}'", expression=required)
    reference = values.get("securityContext")
    if isinstance(reference, dict):
        reference = reference.get("reference")
    upload = await v.direct_uploads.begin(ctx, UploadRequest(
        content_type=_text(values["contentType"], "contentType"),
        size=_size(values["size"]),
        sha256_b64=_text(values["sha256"], "sha256") if "sha256" in values else None,
        security_context=_text(reference, "securityContext") if reference is not None else None,
        filename=_filename(values["filename"]) if "filename" in values else None))
    return FhirJsonResponse(_answer(upload))


async def upload_complete(request: Request) -> Response:
    """`POST Binary/$upload-complete`: the created Binary, answered as `POST /Binary` answers."""
    v = vault(request)
    ctx = context(request)
    v.direct_uploads.require_offered()
    values = await _inputs(request, "$upload-complete", _UPLOAD_COMPLETE_INPUTS)
    if "upload" not in values:
        raise Invalid("$upload-complete needs the parameter 'upload' (the id $upload-url answered)",
                      expression="upload")
    completion = await v.direct_uploads.complete(ctx, _text(values["upload"], "upload"))
    return await written(request, completion.result)


async def _inputs(request: Request, operation: str, accepted: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """The input parameters of a Parameters body, by name: Invalid for another body, an unknown
    parameter, one given twice, a value of a type the parameter does not take, or a query parameter
    (these operations take their input in the body only)."""
    extra = sorted(set(request.query_params) - _GENERAL_QUERY)
    if extra:
        raise Invalid(f"{operation} takes its input as a Parameters body, not in the query ({', '.join(extra)})")
    body = await read_fhir_json(request, PARAMETERS_LIMIT)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise Invalid(f"The body of {operation} must be a Parameters resource")
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise Invalid("Parameters.parameter must be a list", expression="Parameters.parameter")
    values: dict[str, Any] = {}
    for index, p in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        name = p.get("name") if isinstance(p, dict) else None
        if not isinstance(name, str):
            raise Invalid(f"{where} needs a name", expression=where)
        if name not in accepted:
            raise Invalid(f"{operation} has no parameter '{name}' (it takes {', '.join(accepted)})", expression=where)
        if name in values:
            raise Invalid(f"The parameter '{name}' is given twice", expression=where)
        given = [key for key in p if key.startswith("value")]
        if len(given) != 1 or given[0] not in accepted[name]:
            raise Invalid(f"The parameter '{name}' needs one of {', '.join(accepted[name])}", expression=where)
        values[name] = p[given[0]]
    return values


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"The parameter '{name}' must be a non-empty string", expression=name)
    return value.strip()


def _filename(value: Any) -> str | None:
    """The last path component of the `filename` parameter; Invalid for control characters (which no
    file name holds, and which a database may refuse)."""
    text = _text(value, "filename")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise Invalid("The parameter 'filename' holds a control character", expression="filename")
    return safe_filename(text)


def _size(value: Any) -> int:
    """A whole number of bytes from valueDecimal or an integer type (1024.0 is 1024, 1.5 is refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise Invalid("The parameter 'size' must be a whole number of bytes", expression="size")
    return int(value)


def _answer(upload: DirectUpload) -> dict[str, Any]:
    """The Parameters of `$upload-url` (see fhir/operation_definitions.py: upload_url)."""
    parameters: list[dict[str, Any]] = [
        {"name": "upload", "valueString": upload.id},
        {"name": "expires", "valueInstant": to_instant(upload.expires_us)},
    ]
    parameters += [{"name": "header", "valueString": f"{name}: {value}"} for name, value in upload.headers.items()]
    for target in upload.targets:
        part: list[dict[str, Any]] = [{"name": "url", "valueUri": target.url},
                                      {"name": "size", "valueInteger": target.size}]
        if target.part is not None:
            part.append({"name": "number", "valuePositiveInt": target.part})
        parameters.append({"name": "part", "part": part})
    return {"resourceType": "Parameters", "parameter": parameters}
