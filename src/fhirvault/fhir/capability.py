"""The CapabilityStatement that describes what fhirvault supports, and nothing more."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.r4 import FHIR_VERSION, resource_types
from fhirvault.fhir.search_index import TEXT_PARAMS
from fhirvault.fhir.search_params import NOT_DOMAIN_RESOURCES, params_of

ID_PARAM_URL = "http://hl7.org/fhir/SearchParameter/Resource-id"
_SEARCHABLE = ("number", "date", "string", "token", "reference", "quantity", "uri")


# The special parameters (no FHIRPath of their own) and how fhirvault answers them.
_SPECIAL: tuple[tuple[str, str | None, str, str], ...] = (
    ("_content", "http://hl7.org/fhir/SearchParameter/Resource-content", "string",
     "Words of the resource's text (every string but ids, systems, urls, references, meta, content types, "
     "languages, base64 data and dates): each word of a value must start a word of the resource, case and "
     "accents aside; commas are OR."),
    ("_text", "http://hl7.org/fhir/SearchParameter/DomainResource-text", "string",
     "Words of the narrative (text.div), matched as _content matches."),
    ("_list", None, "special", "_list=List/[id] (or the id): the items of that List. Functional lists are not "
                               "supported."),
    ("_filter", None, "special", "The R4 _filter syntax (search_filter.html): and, or, not, parentheses, chains, "
                                 "every operator but filters inside a path ([...]); and binds tighter than or."),
)
_NEAR = {"name": "near", "definition": "http://hl7.org/fhir/SearchParameter/Location-near", "type": "special",
         "documentation": "latitude|longitude|distance|units: great-circle distance, km by default (also m, "
                          "[mi_i], [mi_us], [nmi_i]); 5 km when no distance is given."}


def search_params(rtype: str, text_search: bool = True) -> list[dict[str, Any]]:
    """CapabilityStatement.rest.resource.searchParam of `rtype`: every R4 parameter fhirvault indexes, and
    the special ones it answers (`_content` and `_text` unless `text_search` is off, `_list`, `_filter`,
    Location `near`). The special ones common to every type are documented once, in `rest.searchParam`
    (`common_search_params`): repeated on each of the 146 types, their text was a tenth of the statement."""
    out = []
    for code, p in sorted(params_of(rtype).items()):
        if p.type in _SEARCHABLE or p.type == "composite":
            out.append({"name": code, "definition": p.url, "type": p.type})
    for code, url, kind, _doc in _SPECIAL:
        if code in TEXT_PARAMS and not text_search or code == "_text" and rtype in NOT_DOMAIN_RESOURCES:
            continue
        out.append({"name": code, **({"definition": url} if url else {}), "type": kind})
    if rtype == "Location":
        out.append(dict(_NEAR))
    return out


def common_search_params(text_search: bool = True) -> list[dict[str, Any]]:
    """CapabilityStatement.rest.searchParam: the special parameters every type answers, with how
    fhirvault answers them (`_text` applies to DomainResources only)."""
    return [{"name": code, **({"definition": url} if url else {}), "type": kind, "documentation": doc}
            for code, url, kind, doc in _SPECIAL if text_search or code not in TEXT_PARAMS]


def includes(rtype: str) -> tuple[list[str], list[str]]:
    """(searchInclude, searchRevInclude) of `rtype`: its reference parameters, and those of every type
    that may refer to it."""
    inc = ["*"] + [f"{rtype}:{c}" for c, p in sorted(params_of(rtype).items()) if p.type == "reference"]
    rev = ["*"] + [f"{src}:{c}" for src in sorted(resource_types()) for c, p in sorted(params_of(src).items())
           if p.type == "reference" and (not p.targets or rtype in p.targets) and not c.startswith("_")]
    return inc, rev


def capability_statement(base_url: str, software_version: str, instant: str,
                         extra_rest: dict[str, Any] | None = None,
                         operations_by_type: dict[str, list[dict[str, str]]] | None = None,
                         type_documentation: dict[str, str] | None = None,
                         conditional_delete_max: int = 1,
                         custom_search_params: dict[str, list[dict[str, Any]]] | None = None,
                         text_search: bool = True) -> dict[str, Any]:
    """The server's CapabilityStatement (R4 capabilitystatement.html); `conditional_delete_max` > 1 declares
    conditional deletes of several resources; `text_search` False leaves `_text` and `_content` out (the
    server's SEARCH_TEXT_INDEX); `custom_search_params` adds searchParam entries (name,
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
            "versioning": "versioned-update",  # If-Match is honoured on every write
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "multiple" if conditional_delete_max > 1 else "single",
            "searchInclude": search_include,
            "searchRevInclude": search_rev_include,
            "searchParam": search_params(rtype, text_search) + list((custom_search_params or {}).get(rtype, [])),
        }
        if type_documentation and rtype in type_documentation:
            entry["documentation"] = type_documentation[rtype]
        if operations_by_type and rtype in operations_by_type:
            entry["operation"] = operations_by_type[rtype]
        rest_resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": rest_resources,
        "searchParam": common_search_params(text_search),
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
