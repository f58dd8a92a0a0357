"""Every FHIR resource the tests receive is parsed with fhirclient's strict R4 models.

`check_response` is an httpx response hook on FhirApi: each JSON body holding a resource is parsed
with `fhirclient.models` (R4 4.0.1, strict: unknown elements, wrong types and missing required
elements raise); what fails is kept in FAILURES, and the session fails at its end when any did
(tests/conftest.py). Raw bytes (Binary downloads, streams) are left alone.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

FAILURES: list[str] = []
CHECKED = [0]


def check_response(response: httpx.Response) -> None:
    if response.request.headers.get("X-Medplum", "").lower() == "extended":
        return  # MedplumClient's extended mode asks for Medplum's non-R4 fields (Binary.url) on purpose
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/fhir+json", "application/json"):
        return
    response.read()
    try:
        body: Any = json.loads(response.content)
    except ValueError:
        return
    if not isinstance(body, dict) or "resourceType" not in body:
        return
    CHECKED[0] += 1
    problem = strict_r4_problem(body)
    if problem:
        FAILURES.append(f"{response.request.method} {response.request.url} -> {response.status_code}: {problem}")


def strict_r4_problem(resource: dict[str, Any]) -> str | None:
    """None when fhirclient's strict R4 model of the resource's type accepts it, else why not."""
    from fhirclient.models.fhirelementfactory import FHIRElementFactory

    try:
        FHIRElementFactory.instantiate(resource["resourceType"], resource)
    except Exception as exc:  # FHIRValidationError, and anything the models raise on bad shapes
        return f"{resource.get('resourceType')}: {str(exc).strip()[:600]}"
    return None
