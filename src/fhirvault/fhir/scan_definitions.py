"""The conformance resources of fhirvault's malware scan status: the scan-status extension (a
StructureDefinition) and Binary's `scan-status` SearchParameter, both defined under the server's FHIR base."""

from __future__ import annotations

from typing import Any

from fhirvault.fhir.r4 import FHIR_VERSION

EXTENSION_ID = "scan-status"
SEARCH_PARAMETER_ID = "Binary-scan-status"
# The verdicts on a content: not scanned yet, found clean, found infected (with a signature name), the scanner
# failed (retried), or not scanned by design (over the size limits).
PENDING, CLEAN, INFECTED, ERROR, SKIPPED = "pending", "clean", "infected", "error", "skipped"
SCAN_STATES = (PENDING, CLEAN, INFECTED, ERROR, SKIPPED)


def extension_url(base_url: str) -> str:
    """The canonical URL of the extension: {FHIR base}/StructureDefinition/scan-status."""
    return f"{base_url}/StructureDefinition/{EXTENSION_ID}"


def search_parameter_url(base_url: str) -> str:
    """The canonical URL of the `scan-status` SearchParameter under this server's FHIR base."""
    return f"{base_url}/SearchParameter/{SEARCH_PARAMETER_ID}"


def _part(name: str, value_type: str, short: str, min_: int) -> list[dict[str, Any]]:
    slice_id = f"Extension.extension:{name}"
    return [
        {"id": slice_id, "path": "Extension.extension", "sliceName": name, "short": short, "min": min_, "max": "1"},
        {"id": f"{slice_id}.url", "path": "Extension.extension.url", "fixedUri": name},
        {"id": f"{slice_id}.value[x]", "path": "Extension.extension.value[x]", "min": 1,
         "type": [{"code": value_type}]},
    ]


def scan_status_extension(base_url: str) -> dict[str, Any]:
    """StructureDefinition of the complex extension on Binary.meta (R4 extensibility.html): `status`
    (code, one of SCAN_STATES), `signature` (string, when infected), `scanned` (instant of the verdict)."""
    url = extension_url(base_url)
    return {
        "resourceType": "StructureDefinition", "id": EXTENSION_ID, "url": url, "name": "ScanStatus",
        "title": "Malware scan status", "status": "active", "fhirVersion": FHIR_VERSION,
        "description": "The malware scan verdict on a Binary's content, computed when the Binary is read "
                       f"(status: {' | '.join(SCAN_STATES)}).",
        "kind": "complex-type", "abstract": False, "context": [{"type": "element", "expression": "Meta"}],
        "type": "Extension", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Extension", "path": "Extension", "short": "Malware scan status of the content", "max": "1"},
            {"id": "Extension.extension", "path": "Extension.extension",
             "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "closed"}},
            *_part("status", "code", f"{' | '.join(SCAN_STATES)}", 1),
            *_part("signature", "string", "The scanner's name for what it found (infected only)", 0),
            *_part("scanned", "instant", "When the verdict was reached", 0),
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"},
        ]},
    }


def scan_status_search_parameter(base_url: str) -> dict[str, Any]:
    """SearchParameter `scan-status` of Binary (token; codes of SCAN_STATES, several with commas)."""
    return {
        "resourceType": "SearchParameter", "id": SEARCH_PARAMETER_ID, "url": search_parameter_url(base_url),
        "name": "scan-status", "status": "active", "code": "scan-status", "base": ["Binary"], "type": "token",
        "description": "The malware scan verdict on the Binary's content: "
                       f"{' | '.join(SCAN_STATES)} (the scan-status extension on Binary.meta)",
        "expression": f"Binary.meta.extension('{extension_url(base_url)}').extension('status').value",
    }
