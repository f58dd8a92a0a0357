"""OperationDefinitions of the operations fhirvault adds to FHIR ($binary-access-read/-write)."""

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


def builtin_operation_definitions(base_url: str) -> dict[str, dict[str, Any]]:
    """Every OperationDefinition this server implements, by id, with canonical URLs under `base_url` (served
    at OperationDefinition/{id} and named in the CapabilityStatement)."""
    return {d["id"]: d for d in (binary_access_read(base_url), binary_access_write(base_url), validate(base_url))}
