"""OperationDefinitions of the operations fhirvault adds to FHIR ($binary-access-read/-write, $validate, and in
s3 mode the direct uploads $upload-url / $upload-complete)."""

from __future__ import annotations

from typing import Any

PATH_PARAMETER = {
    "name": "path", "use": "in", "min": 0, "max": "1", "type": "string",
    "documentation": "FHIRPath (member access and [index] only) to an Attachment, starting with the resource "
                     "type, e.g. DocumentReference.content[1].attachment; optional for Binary",
}


def _instance_operation(base_url: str, code: str, name: str, description: str, affects_state: bool,
                        returns: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "OperationDefinition",
        "id": code,
        "url": f"{base_url}/OperationDefinition/{code}",
        "name": name,
        "status": "active",
        "kind": "operation",
        "code": code,
        "description": description,
        "system": False, "type": False, "instance": True,
        "affectsState": affects_state,
        "parameter": [PATH_PARAMETER, {"name": "return", "use": "out", "min": 1, "max": "1", **returns}],
    }


def binary_access_read(base_url: str) -> dict[str, Any]:
    """The OperationDefinition of $binary-access-read (HAPI FHIR's operation) with canonical URLs under
    `base_url`."""
    return _instance_operation(
        base_url, "binary-access-read", "BinaryAccessRead",
        "Streams the bytes of the Attachment at `path` (inline data, or the Binary its url names) "
        "with its contentType; honours Range, If-Range and If-None-Match. Works on a resource, on "
        "a version of it (/_history/{vid}/$binary-access-read) and on Binary.",
        affects_state=False,
        returns={"type": "Binary", "documentation": "The raw bytes (the HTTP body), not a Parameters resource"})


def binary_access_write(base_url: str) -> dict[str, Any]:
    """The OperationDefinition of $binary-access-write (HAPI FHIR's operation) with canonical URLs under
    `base_url`."""
    return _instance_operation(
        base_url, "binary-access-write", "BinaryAccessWrite",
        "Stores the raw request body as the content of the existing Attachment at `path`: "
        "contentType from the request Content-Type, size and hash set, everything else kept; "
        "inline up to INLINE_MAX_BYTES, else in blob storage. Saves a new version (If-Match "
        "honoured) and returns the updated resource.",
        affects_state=True,
        returns={"type": "Resource", "documentation": "The updated resource"})


def validate(base_url: str) -> dict[str, Any]:
    """$validate as fhirvault runs it: R4's Resource-validate, on a type and on an instance."""
    def param(name: str, use: str, ptype: str, doc: str, min_: int = 0) -> dict[str, Any]:
        return {"name": name, "use": use, "min": min_, "max": "1", "type": ptype, "documentation": doc}

    return {
        "resourceType": "OperationDefinition", "id": "validate", "url": f"{base_url}/OperationDefinition/validate",
        "name": "Validate", "status": "active", "kind": "operation", "code": "validate",
        "base": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        "description": "Checks a resource against the R4 (4.0.1) base definitions, as every write does, "
                       "and answers an OperationOutcome (200 whether or not the resource is valid). "
                       "Other profiles are not checked: a `profile` gets a warning issue saying so.",
        "system": False, "type": True, "instance": True, "affectsState": False,
        "parameter": [
            param("resource", "in", "Resource", "The resource to check; the body may be the resource itself"),
            param("mode", "in", "code", "create | update | delete: also check what that interaction would refuse"),
            param("profile", "in", "uri", "Not supported: answered with a warning"),
            param("return", "out", "OperationOutcome", "The issues found, or one information issue", 1),
        ],
    }


def _param(name: str, use: str, ptype: str | None, doc: str, min_: int = 0, max_: str = "1",
           parts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "use": use, "min": min_, "max": max_, "documentation": doc}
    if ptype is not None:
        out["type"] = ptype
    if parts:
        out["part"] = parts
    return out


def _binary_type_operation(base_url: str, code: str, name: str, description: str,
                           parameters: list[dict[str, Any]]) -> dict[str, Any]:
    """An operation on the Binary type (`Binary/$code`) that changes state."""
    return {
        "resourceType": "OperationDefinition", "id": code, "url": f"{base_url}/OperationDefinition/{code}",
        "name": name, "status": "active", "kind": "operation", "code": code, "description": description,
        "resource": ["Binary"], "system": False, "type": True, "instance": False, "affectsState": True,
        "parameter": parameters,
    }


def upload_url(base_url: str) -> dict[str, Any]:
    """`Binary/$upload-url`: presigned URLs of the object store for a direct upload (s3 mode)."""
    return _binary_type_operation(
        base_url, "upload-url", "UploadUrl",
        "Begins a direct upload to the object store: answers presigned URLs that take the "
        "content with a plain HTTP PUT (one URL, or one per part above DIRECT_UPLOAD_PART_BYTES), "
        "valid until `expires`. The bytes never pass through the FHIR server. Needs the rights "
        "of POST /Binary (create on Binary; update on the securityContext target). Complete "
        "the upload with Binary/$upload-complete.",
        [
            _param("contentType", "in", "code", "The media type of the content (Binary.contentType)", 1),
            _param("size", "in", "decimal", "The exact size of the content in bytes, a whole number "
                   "(valueInteger is accepted too)", 1),
            _param("sha256", "in", "base64Binary", "The SHA-256 of the content, checked at completion. Content "
                   "up to the part size then goes in one PUT that must carry it as x-amz-checksum-sha256 (the "
                   "store refuses other bytes); without it the content always goes in parts (one when small)"),
            _param("securityContext", "in", "Reference", "Becomes Binary.securityContext"),
            _param("filename", "in", "string", "File name kept for downloads, as ?_filename= on POST /Binary"),
            _param("upload", "out", "string", "The upload's id, for $upload-complete", 1),
            _param("expires", "out", "instant", "When the URLs stop working; complete the upload before", 1),
            _param("header", "out", "string", "A header every PUT must carry, as `Name: value`", 0, "*"),
            _param("part", "out", None, "One PUT: its URL, the exact number of bytes it takes, and its part "
                   "number (1-based, the content's bytes in order; one part without number: the whole content)",
                   1, "*", parts=[
                       _param("url", "out", "uri", "The presigned URL to PUT to", 1),
                       _param("size", "out", "integer", "Exactly how many bytes the PUT sends", 1),
                       _param("number", "out", "positiveInt", "Part number of a multipart upload"),
                   ]),
        ])


def upload_complete(base_url: str) -> dict[str, Any]:
    """`Binary/$upload-complete`: verify a direct upload and create its Binary (s3 mode)."""
    return _binary_type_operation(
        base_url, "upload-complete", "UploadComplete",
        "Completes a direct upload begun by the same client with Binary/$upload-url: joins the "
        "parts, checks the object's size and SHA-256 against what was declared (a mismatch: 422, "
        "the object removed, nothing stored), and creates the Binary exactly as POST /Binary "
        "would (201, Location, a signed URL in the Link header). Repeating it answers the same "
        "Binary (200) until the upload expires.",
        [
            _param("upload", "in", "string", "The id $upload-url answered", 1),
            _param("return", "out", "Binary", "The created Binary (without data)", 1),
        ])


def builtin_operation_definitions(base_url: str, *, direct_uploads: bool = False) -> dict[str, dict[str, Any]]:
    """Every OperationDefinition this server implements, by id, with canonical URLs under `base_url` (served
    at OperationDefinition/{id} and named in the CapabilityStatement); the direct upload ones only when
    offered (s3 mode)."""
    found = [binary_access_read(base_url), binary_access_write(base_url), validate(base_url)]
    if direct_uploads:
        found += [upload_url(base_url), upload_complete(base_url)]
    return {d["id"]: d for d in found}


def applies_to(definition: dict[str, Any], resource_type: str) -> bool:
    """Whether an OperationDefinition applies to `resource_type` (no `resource` list: to every type)."""
    types = definition.get("resource")
    return not types or resource_type in types
