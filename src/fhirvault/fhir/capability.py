"""The CapabilityStatement that describes what fhirvault supports, and nothing more."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.r4 import FHIR_VERSION, has_param, resource_types

SEARCH_PARAMS = [
    {"name": "_id", "type": "token", "documentation": "Logical id; comma-separated for several"},
    {"name": "_lastUpdated", "type": "date", "documentation": "Prefixes eq, ne, gt, lt, ge, le, sa, eb"},
]


def capability_statement(base_url: str, software_version: str, instant: str,
                         extra_rest: dict[str, Any] | None = None,
                         operations_by_type: dict[str, list[dict[str, str]]] | None = None,
                         type_documentation: dict[str, str] | None = None,
                         conditional_delete_max: int = 1) -> dict[str, Any]:
    """The server's CapabilityStatement (R4 capabilitystatement.html); `conditional_delete_max` > 1 declares
    conditional deletes of several resources."""
    interactions = [{"code": c} for c in
                    ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")]
    rest_resources = []
    for rtype in sorted(resource_types()):
        params = list(SEARCH_PARAMS)
        for code, ptype in (("identifier", "token"), ("patient", "reference"), ("subject", "reference")):
            if has_param(rtype, code):
                params.append({"name": code, "type": ptype})
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": interactions,
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "multiple" if conditional_delete_max > 1 else "single",
            "searchParam": params,
        }
        if type_documentation and rtype in type_documentation:
            entry["documentation"] = type_documentation[rtype]
        if operations_by_type and rtype in operations_by_type:
            entry["operation"] = operations_by_type[rtype]
        rest_resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": rest_resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
    }
    if extra_rest:
        rest.update(extra_rest)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant,
        "publisher": "fhirvault",
        "kind": "instance",
        "software": {"name": "fhirvault", "version": software_version},
        "implementation": {"description": "fhirvault FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json", "application/fhir+json"],
        "rest": [rest],
    }
