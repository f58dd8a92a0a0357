"""Search index entries of a resource: identifier tokens and patient/subject/compartment references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirvault.fhir.elements import values_at
from fhirvault.fhir.r4 import param_paths
from fhirvault.fhir.references import parse_reference

COMPARTMENT = "_compartment"


@dataclass(frozen=True)
class TokenEntry:
    """One identifier token of a resource, for the access rules: the parameter, the identifier's system (None
    when absent) and value."""

    param: str
    system: str | None
    value: str


@dataclass(frozen=True)
class RefEntry:
    """One reference of a resource that the access rules use (patient, subject, or the patient compartment),
    to "Type/id"."""

    param: str
    target: str  # "Type/id"


def index_entries(resource: dict[str, Any], base_url: str) -> tuple[set[TokenEntry], set[RefEntry]]:
    """The identifier tokens and the patient/subject/compartment references of `resource` (R4
    CompartmentDefinition patient), with references resolved against `base_url`; what the access policy
    judges compartments by."""
    rtype = resource["resourceType"]
    tokens: set[TokenEntry] = set()
    refs: set[RefEntry] = set()
    for spec in param_paths(rtype, "identifier"):
        for ident in values_at(resource, spec["path"]):
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                tokens.add(TokenEntry("identifier", ident.get("system"), ident["value"]))
    for code in ("patient", "subject", COMPARTMENT):
        specs = param_paths(rtype, "compartment" if code == COMPARTMENT else code)
        for spec in specs:
            for ref in values_at(resource, spec["path"]):
                if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
                    continue
                parsed = parse_reference(ref["reference"], base_url)
                if parsed is None:
                    continue
                target = spec.get("target")
                if code == COMPARTMENT and parsed.resource_type != "Patient":
                    continue
                if target and parsed.resource_type != target:
                    continue
                refs.add(RefEntry(code, parsed.relative))
    if rtype == "Patient" and "id" in resource:
        refs.add(RefEntry(COMPARTMENT, f"Patient/{resource['id']}"))
    if rtype == "Binary":
        # R4 lists no Binary in the patient compartment; a Binary whose securityContext names a
        # patient is put in that patient's compartment so that compartment searches find it.
        context = resource.get("securityContext")
        if isinstance(context, dict) and isinstance(context.get("reference"), str):
            parsed = parse_reference(context["reference"], base_url)
            if parsed is not None and parsed.resource_type == "Patient":
                refs.add(RefEntry(COMPARTMENT, parsed.relative))
    return tokens, refs
