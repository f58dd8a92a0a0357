"""The Patient compartments a resource lies in, by the references of R4's patient CompartmentDefinition."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.elements import values_at
from fhirvault.fhir.r4 import param_paths
from fhirvault.fhir.references import parse_reference

COMPARTMENT = "_compartment"


def compartments(resource: dict[str, Any], base_url: str) -> set[str]:
    """The Patients ("Patient/id") in whose compartment `resource` lies (R4 CompartmentDefinition patient:
    the references of its parameters for the resource's type that name a Patient, resolved against
    `base_url`); a Patient lies in its own. A Binary whose securityContext names a Patient lies in that
    Patient's compartment too, although R4 lists no Binary there, so that compartment searches and
    patient-context access find it. What the access policy judges compartments by, and the `_compartment`
    rows of the search index."""
    rtype = resource["resourceType"]
    out: set[str] = set()
    for spec in param_paths(rtype, "compartment"):
        if spec.get("target") not in (None, "", "Patient"):
            continue
        for ref in values_at(resource, spec["path"]):
            if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
                continue
            parsed = parse_reference(ref["reference"], base_url)
            if parsed is not None and parsed.resource_type == "Patient":
                out.add(parsed.relative)
    if rtype == "Patient" and "id" in resource:
        out.add(f"Patient/{resource['id']}")
    if rtype == "Binary":
        context = resource.get("securityContext")
        if isinstance(context, dict) and isinstance(context.get("reference"), str):
            parsed = parse_reference(context["reference"], base_url)
            if parsed is not None and parsed.resource_type == "Patient":
                out.add(parsed.relative)
    return out
