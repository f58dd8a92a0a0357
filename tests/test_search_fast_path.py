"""Property: the index's direct walk of simple FHIRPath shapes, and its skipping of parameters whose
elements a resource lacks, select exactly what fhirpathpy selects for the same SearchParameter.

Resources: the HL7 R4 definitions corpus of tests/test_validation_corpus.py (StructureDefinitions,
SearchParameters, ValueSets, CodeSystems, ...), the clinical resources bench/search.py generates, and
random Observations with every value[x] type and components (hypothesis)."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from typing import Any

import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.search import population
from fhirvault.fhir.search_index import (
    _compiled,
    _component_values,
    _element_types,
    _fast_plan,
    evaluate_expression,
    search_index,
)
from fhirvault.fhir.search_params import ROW_PARAMS, params_of
from tests.test_validation_corpus import CORPUS, corpus_files, resources_of

PER_FILE = 250  # resources per corpus file: every type and shape they hold, in a bounded time


def plain(value: Any) -> Any:
    """A value as JSON holds it: fhirpathpy reads decimals as Decimal."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def expressions(resource: dict[str, Any]) -> list[str]:
    """The expressions of the resource's type that the index evaluates on the whole resource."""
    return sorted({p.expr for p in params_of(resource["resourceType"]).values()
                   if p.code not in ROW_PARAMS and p.expr != resource["resourceType"]})


def reference(expr: str, resource: dict[str, Any]) -> list[Any]:
    """fhirpathpy's values. Its `as` takes one item, as FHIRPath's does, but R4's expressions apply `as`
    to collections (`Observation.component.value as Quantity`); the index reads them item by item, as
    `ofType` does (and as R5 writes them): fhirpathpy then evaluates the `ofType` form."""
    expr = fhir_type_names(expr)
    try:
        return [plain(v) for v in _compiled(expr)(copy.deepcopy(resource))]
    except ValueError as exc:
        if "singleton" not in str(exc):
            raise
    of_type = re.sub(r"(\S+) as (\w+)", r"\1.ofType(\2)", expr)
    return [plain(v) for v in _compiled(of_type)(copy.deepcopy(resource))]


PRIMITIVES = {t for t in models["r4"]["type2Parent"] if t[0].islower()}


def fhir_type_names(expr: str) -> str:
    """R4 spells some primitive types capitalized in expressions (`value.as(DateTime)`); FHIRPath type
    names are case-sensitive, fhirpathpy then finds nothing, and the index reads FHIR's `dateTime`."""
    def fix(m: re.Match[str]) -> str:
        name = m.group(2)
        lower = name[0].lower() + name[1:]
        return m.group(1) + (lower if lower in PRIMITIVES else name)

    return re.sub(r"(\bas\(|\bas )([A-Za-z]+)", fix, expr)


def component_mismatches(resource: dict[str, Any]) -> list[str]:
    """Each composite's components, read from each of its elements, against fhirpathpy on a typed node."""
    out = []
    for param in params_of(resource["resourceType"]).values():
        if param.type != "composite":
            continue
        own_type, type_path = _element_types(param.expr)
        for element in evaluate_expression(param.expr, resource):
            element_type = own_type if element is resource else type_path
            for comp in param.components:
                if comp.expr.startswith("%resource."):
                    continue  # read from the resource by evaluate_expression, which mismatches() compares
                got = [plain(v) for v in _component_values(comp.expr, element, element_type, resource)]
                node = copy.deepcopy(element)
                if element_type and isinstance(node, dict):
                    node = ResourceNode.create_node(node, element_type)
                expr = fhir_type_names(comp.expr)
                try:
                    expected = [plain(v) for v in _compiled(expr)(node)]
                except ValueError as exc:  # `as` on a collection: see reference()
                    if "singleton" not in str(exc):
                        raise
                    of_type = re.sub(r"(\S+) as (\w+)", r"\1.ofType(\2)", expr)
                    expected = [plain(v) for v in _compiled(of_type)(node)]
                if sorted(map(repr, got)) != sorted(map(repr, expected)):
                    out.append(f"{resource['resourceType']} {param.code} {comp.expr}: {got!r} != {expected!r}")
    return out


def mismatches(resource: dict[str, Any]) -> list[str]:
    out = component_mismatches(resource)
    for expr in expressions(resource):
        expected = reference(expr, resource)
        got = [plain(v) for v in evaluate_expression(expr, resource)]
        if sorted(map(repr, got)) != sorted(map(repr, expected)):
            out.append(f"{resource['resourceType']}/{resource.get('id')} {expr}: {got!r} != {expected!r}")
    return out


@pytest.mark.parametrize("name", CORPUS)
def test_fast_path_equals_fhirpathpy_on_r4_definitions(name: str) -> None:
    path = next(p for p in corpus_files() if p.name == name)
    checked, failures, fast = 0, [], 0
    for resource in resources_of(path):
        if checked == PER_FILE:
            break
        checked += 1
        fast += sum(_fast_plan(e) is not None for e in expressions(resource))
        failures += mismatches(resource)
    assert checked > 0 and fast > 0
    assert failures == [], "\n".join(failures[:20])


def test_fast_path_equals_fhirpathpy_on_clinical_resources() -> None:
    failures = [f for r in population(300, seed=11) for f in mismatches(r)]
    assert failures == [], "\n".join(failures[:20])


VALUE_X = st.sampled_from([
    ("valueQuantity", {"value": 5.5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}),
    ("valueCodeableConcept", {"coding": [{"system": "urn:s", "code": "c"}], "text": "Some text"}),
    ("valueString", "Ève"), ("valueBoolean", True), ("valueInteger", 7),
    ("valueRange", {"low": {"value": 1}, "high": {"value": 2.5}}),
    ("valueRatio", {"numerator": {"value": 1}}), ("valueTime", "10:00:00"),
    ("valueDateTime", "2025-03-04T10:00:00Z"), ("valuePeriod", {"start": "2025-01-01"}),
    ("valueSampledData", {"origin": {"value": 0}, "period": 1, "dimensions": 1, "data": "1 2"}),
])


@st.composite
def observations(draw: st.DrawFn) -> dict[str, Any]:
    o: dict[str, Any] = {"resourceType": "Observation", "id": "x", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}], "text": "A code"}}
    if draw(st.booleans()):
        key, value = draw(VALUE_X)
        o[key] = value
    if draw(st.booleans()):
        o["subject"] = {"reference": draw(st.sampled_from(["Patient/1", "Group/2", "http://other.org/fhir/Patient/3",
                                                           "urn:uuid:5f3c", "#contained"]))}
    if draw(st.booleans()):
        o["dataAbsentReason"] = {"coding": [{"code": "unknown"}]}
    components = []
    for _ in range(draw(st.integers(0, 2))):
        key, value = draw(VALUE_X)
        components.append({"code": {"coding": [{"code": "c1"}]}, key: value})
    if components:
        o["component"] = components
    if draw(st.booleans()):
        o["effectiveTiming"] = {"event": ["2025-01-01"]}
    return o


@settings(max_examples=150, deadline=None)
@given(observations())
def test_fast_path_equals_fhirpathpy_on_random_observations(o: dict[str, Any]) -> None:
    assert mismatches(o) == []
    search_index(o, "http://example.org/fhir/R4")  # composites over the same values run through


def test_unlisted_shapes_use_fhirpathpy() -> None:
    """Expressions outside the simple shapes are not walked directly (they still index: through fhirpathpy)."""
    assert _fast_plan("Patient.deceased.exists() and Patient.deceased != false") is None
    assert _fast_plan("(Observation.value as CodeableConcept).text") is not None
    deceased = {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}
    assert evaluate_expression("Patient.deceased.exists() and Patient.deceased != false", deceased) == [True]
