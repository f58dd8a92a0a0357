"""The CapabilityStatement that describes what fhirvault supports, and nothing more."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.r4 import FHIR_VERSION, resource_types
from fhirvault.fhir.search_params import params_of

ID_PARAM_URL = "http://hl7.org/fhir/SearchParameter/Resource-id"
_SEARCHABLE = ("number", "date", "string", "token", "reference", "quantity", "uri")


def search_params(rtype: str) -> list[dict[str, Any]]:
    """CapabilityStatement.rest.resource.searchParam of `rtype`: every R4 parameter fhirvault indexes."""
    out = []
    for code, p in sorted(params_of(rtype).items()):
        if p.type in _SEARCHABLE or (p.type == "composite" and len(p.components) == 2):
            out.append({"name": code, "definition": p.url, "type": p.type})
    return out


def includes(rtype: str) -> tuple[list[str], list[str]]:
    """(searchInclude, searchRevInclude) of `rtype`: its reference parameters, and those of every type
    that may refer to it."""
    inc = ["*"] + [f"{rtype}:{c}" for c, p in sorted(params_of(rtype).items()) if p.type == "reference"]
    rev = [f"{src}:{c}" for src in sorted(resource_types()) for c, p in sorted(params_of(src).items())
           if p.type == "reference" and (not p.targets or rtype in p.targets) and not c.startswith("_")]
    return inc, rev


def capability_statement(base_url: str, software_version: str, instant: str,
                         extra_rest: dict[str, Any] | None = None,
                         operations_by_type: dict[str, list[dict[str, str]]] | None = None,
                         type_documentation: dict[str, str] | None = None,
                         conditional_delete_max: int = 1,
                         custom_search_params: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The server's CapabilityStatement (R4 capabilitystatement.html); `conditional_delete_max` > 1 declares
    conditional deletes of several resources; `custom_search_params` adds searchParam entries (name,
    definition, type, documentation) of the server's own parameters, by resource type."""
    interactions = [{"code": c} for c in
                    ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")]
    rest_resources = []
    for rtype in sorted(resource_types()):
        search_include, search_rev_include = includes(rtype)
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
            "searchInclude": search_include,
            "searchRevInclude": search_rev_include,
            "searchParam": search_params(rtype) + list((custom_search_params or {}).get(rtype, [])),
        }
        if type_documentation and rtype in type_documentation:
            entry["documentation"] = type_documentation[rtype]
        if operations_by_type and rtype in operations_by_type:
            entry["operation"] = operations_by_type[rtype]
        rest_resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": rest_resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                        {"code": "search-system"}],
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
