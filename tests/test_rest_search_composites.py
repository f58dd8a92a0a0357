"""Composite search parameters over real HTTP (SQLite and PostgreSQL): every shape R4 defines, two and
three components, prefixes on any value component, and composites matched within one element only."""

from __future__ import annotations

import uuid

from fhirvault.fhir.r4 import resource_types
from fhirvault.fhir.search_params import params_of
from tests.support.searching import LOINC, UCUM, create, found
from tests.support.server import FhirApi


def test_every_composite_component_names_a_parameter_of_its_type_with_the_same_type() -> None:
    composites = 0
    for rtype in resource_types():
        for code, p in params_of(rtype).items():
            if p.type != "composite":
                continue
            composites += 1
            for comp in p.components:
                own = params_of(rtype).get(comp.code)
                assert own is not None and own.type == comp.type, (rtype, code, comp)
                # the component's expression reads what its own parameter reads (R4's
                # DocumentReference-relationship swaps them; the generator corrects it)
                tail = comp.expr.removeprefix("%resource.").split(".as(")[0].split(" ")[0]
                assert tail in own.expr, (rtype, code, comp, own.expr)
    assert composites > 70


def test_observation_composites_and_prefixes(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    ident = {"system": "urn:comp", "value": t}
    glucose = {"coding": [{"system": LOINC, "code": f"g{t}"}]}
    a = create(api, {"resourceType": "Observation", "status": "final", "identifier": [ident], "code": glucose,
                     "valueQuantity": {"value": 6.3, "system": UCUM, "code": "mmol/L"}})
    b = create(api, {"resourceType": "Observation", "status": "final", "identifier": [ident], "code": glucose,
                     "valueCodeableConcept": {"coding": [{"system": "urn:v", "code": "high"}]}})
    c = create(api, {"resourceType": "Observation", "status": "final", "identifier": [ident], "code": glucose,
                     "valueDateTime": "2024-05-06", "component": [
                         {"code": {"coding": [{"system": LOINC, "code": f"sys{t}"}]},
                          "valueQuantity": {"value": 120, "system": UCUM, "code": "mm[Hg]"}},
                         {"code": {"coding": [{"system": LOINC, "code": f"dia{t}"}]},
                          "valueQuantity": {"value": 80, "system": UCUM, "code": "mm[Hg]"}},
                         {"code": {"coding": [{"system": LOINC, "code": f"flag{t}"}]},
                          "valueCodeableConcept": {"coding": [{"system": "urn:v", "code": "low"}]}}]})
    d = create(api, {"resourceType": "Observation", "status": "final", "identifier": [ident], "code": glucose,
                     "valueString": "Trace amounts"})
    q = {"identifier": f"urn:comp|{t}"}

    def s(name: str, value: str) -> list[str]:
        return found(api, "/Observation", {**q, name: value})

    assert s("code-value-quantity", f"{LOINC}|g{t}$6.3|{UCUM}|mmol/L") == [a["id"]]
    assert s("code-value-quantity", f"g{t}$ge6") == [a["id"]]
    assert s("code-value-quantity", f"g{t}$lt6") == []
    assert s("code-value-concept", f"g{t}$urn:v|high") == [b["id"]]
    assert s("code-value-concept", f"g{t}$low") == []
    assert s("code-value-date", f"g{t}$2024-05") == [c["id"]]
    assert s("code-value-date", f"g{t}$gt2024-06") == []
    assert s("code-value-string", f"g{t}$trace") == [d["id"]]
    assert s("component-code-value-quantity", f"sys{t}$gt100") == [c["id"]]
    # the parts must match within one component: systolic 80 does not exist
    assert s("component-code-value-quantity", f"sys{t}$lt100") == []
    assert s("component-code-value-quantity", f"dia{t}$lt100") == [c["id"]]
    assert s("component-code-value-concept", f"flag{t}$low") == [c["id"]]
    assert s("combo-code-value-quantity", f"g{t}$6.3") == [a["id"]]  # the observation itself
    assert s("combo-code-value-quantity", f"sys{t}$120") == [c["id"]]  # a component
    assert s("combo-code-value-concept", f"flag{t}$low") == [c["id"]]
    assert s("combo-code-value-concept", f"g{t}$high") == [b["id"]]
    assert s("code-value-quantity", f"g{t}$6.3,g{t}$99") == [a["id"]]  # comma: OR of whole values
    assert s("code-value-quantity:missing", "true") == sorted([b["id"], c["id"], d["id"]])
    r = api.get("/Observation", params={"code-value-quantity": f"g{t}$1$2"})
    assert r.status_code == 400 and "2 values" in r.text
    r = api.get("/Observation", params={"code-value-quantity": f"g{t}$"})
    assert r.status_code == 400 and "value-quantity" in r.text


def test_three_component_composites_on_molecular_sequence(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    seq = create(api, {"resourceType": "MolecularSequence", "coordinateSystem": 0,
                       "identifier": [{"system": "urn:seq", "value": t}],
                       "referenceSeq": {"genomeBuild": "GRCh38",  # msq-5: with the chromosome
                                        "chromosome": {"coding": [{"system": "urn:chr", "code": f"c{t}"}]},
                                        "referenceSeqId": {"coding": [{"system": "urn:ref", "code": f"r{t}"}]},
                                        "windowStart": 100, "windowEnd": 500},
                       "variant": [{"start": 120, "end": 130}, {"start": 400, "end": 410}]})
    q = {"identifier": f"urn:seq|{t}"}

    def s(name: str, value: str) -> list[str]:
        return found(api, "/MolecularSequence", {**q, name: value})

    assert s("chromosome-window-coordinate", f"c{t}$ge100$le500") == [seq["id"]]
    assert s("chromosome-window-coordinate", f"c{t}$gt100$le500") == []
    assert s("chromosome-window-coordinate", "other$ge100$le500") == []
    assert s("referenceseqid-window-coordinate", f"urn:ref|r{t}$100$500") == [seq["id"]]
    assert s("chromosome-variant-coordinate", f"c{t}$ge120$le130") == [seq["id"]]
    assert s("chromosome-variant-coordinate", f"c{t}$ge400$lt411") == [seq["id"]]
    # start of one variant and end of the other: no single variant matches
    assert s("chromosome-variant-coordinate", f"c{t}$120$410") == []
    assert s("referenceseqid-variant-coordinate", f"r{t}$lt200$gt125") == [seq["id"]]
    assert s("chromosome-variant-coordinate:missing", "false") == [seq["id"]]
    r = api.get("/MolecularSequence", params={"chromosome-variant-coordinate": f"c{t}$1"})
    assert r.status_code == 400 and "3 values" in r.text
    assert api.get("/MolecularSequence", params={"_sort": "chromosome-variant-coordinate"}).status_code == 400


def test_use_context_group_and_document_relationship_composites(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    usage = "http://terminology.hl7.org/CodeSystem/usage-context-type"
    vs = create(api, {"resourceType": "ValueSet", "status": "active", "url": f"urn:vs:{t}", "useContext": [
        {"code": {"system": usage, "code": "age"}, "valueRange": {"low": {"value": 18, "code": "a", "system": UCUM},
                                                                   "high": {"value": 65, "code": "a", "system": UCUM}}},
        {"code": {"system": usage, "code": "focus"}, "valueCodeableConcept": {"coding": [{"code": f"f{t}"}]}}]})
    q = {"url": f"urn:vs:{t}"}
    assert found(api, "/ValueSet", {**q, "context-type-quantity": "age$le30"}) == [vs["id"]]
    assert found(api, "/ValueSet", {**q, "context-type-quantity": "age$gt70"}) == []
    assert found(api, "/ValueSet", {**q, "context-type-quantity": "age$30"}) == []  # eq: the range inside [29.5, 30.5)
    assert found(api, "/ValueSet", {**q, "context-type-value": f"focus$f{t}"}) == [vs["id"]]
    assert found(api, "/ValueSet", {**q, "context-type-value": f"age$f{t}"}) == []
    group = create(api, {"resourceType": "Group", "type": "person", "actual": True, "characteristic": [
        {"code": {"coding": [{"code": f"k{t}"}]}, "valueCodeableConcept": {"coding": [{"code": "yes"}]},
         "exclude": False}]})
    assert found(api, "/Group", {"characteristic-value": f"k{t}$yes"}) == [group["id"]]
    assert found(api, "/Group", {"characteristic-value": f"k{t}$no"}) == []
    old = create(api, {"resourceType": "DocumentReference", "status": "current",
                       "content": [{"attachment": {"contentType": "text/plain"}}]})
    new = create(api, {"resourceType": "DocumentReference", "status": "current",
                       "relatesTo": [{"code": "replaces", "target": {"reference": f"DocumentReference/{old['id']}"}}],
                       "content": [{"attachment": {"contentType": "text/plain"}}]})
    assert found(api, "/DocumentReference", {"relationship": f"DocumentReference/{old['id']}$replaces"}) \
        == [new["id"]]
    assert found(api, "/DocumentReference", {"relationship": f"{old['id']}$replaces"}) == [new["id"]]
    assert found(api, "/DocumentReference", {"relationship": f"DocumentReference/{old['id']}$signs"}) == []
