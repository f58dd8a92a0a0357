"""Token search values and modifiers judged by the element types a parameter reaches (FHIR R4
search.html#token), over real HTTP on SQLite and PostgreSQL: a value or modifier that could never match
is a 400 OperationOutcome naming the parameter and the value or modifier, never an empty 200; with the
default `Prefer: handling=lenient` too (only unknown parameters are ignored)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fhirvault.fhir.r4 import resource_types
from fhirvault.fhir.search_index import code_systems, code_values, value_types
from fhirvault.fhir.search_params import params_of
from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json"}
LENIENT = {"Prefer": "handling=lenient"}


def create(api: FhirApi, resource: dict) -> dict:
    r = api.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


def found(api: FhirApi, path: str, params: Any) -> list[str]:
    r = api.get(path, params=params)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


def refused(api: FhirApi, path: str, params: Any, *words: str, headers: dict[str, str] | None = None) -> str:
    """Asserts a 400 OperationOutcome whose diagnostics name every one of `words`; gives the diagnostics."""
    r = api.get(path, params=params, headers=headers or {})
    assert r.status_code == 400, (path, params, r.status_code, r.text)
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome", r.text
    text = " ".join(i.get("diagnostics", "") for i in outcome["issue"])
    for w in words:
        assert w in text, (params, w, text)
    return text


def test_patient_active_yes_is_a_400_naming_parameter_and_value(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:12]
    p = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": t}], "active": True})
    mine = {"identifier": f"urn:tt|{t}"}
    # the example, with the default handling and with lenient handling asked for
    refused(api, "/Patient", {"active": "yes"}, "active", "yes")
    refused(api, "/Patient", {"active": "yes"}, "active", "yes", headers=LENIENT)
    # lenient still ignores an unknown parameter, but not a malformed value beside it
    refused(api, "/Patient", {"nonsense": "1", "active": "yes"}, "active", "yes", headers=LENIENT)
    lenient = api.get("/Patient", params={**mine, "nonsense": "1", "active": "true"}, headers=LENIENT)
    assert lenient.status_code == 200, lenient.text
    assert [e["resource"]["id"] for e in lenient.json()["entry"] if e["search"]["mode"] == "match"] == [p["id"]]
    # the code is judged with or without a system, in every OR value, under :not
    refused(api, "/Patient", {"active": "urn:x|yes"}, "active", "urn:x|yes")
    refused(api, "/Patient", {"active": "true,yes"}, "active", "yes")
    refused(api, "/Patient", {"active:not": "maybe"}, "active:not", "maybe")
    refused(api, "/Patient", {"active": "True"}, "active", "True")
    # a boolean has no code system: such a value could never match either
    refused(api, "/Patient", {"active": "http://hl7.org/fhir/special-values|true"}, "active", "special-values|true")
    # what can match still does
    assert found(api, "/Patient", {**mine, "active": "true"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "active": "|true"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "active": "false,true"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "active:not": "true"}) == []
    assert found(api, "/Patient", {**mine, "active": "false"}) == []


def test_every_boolean_token_parameter_is_judged_not_only_patient_active(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:12]
    g = create(api, {"resourceType": "Group", "identifier": [{"system": "urn:tt", "value": t}], "type": "person",
                     "actual": True})
    for path, code in (("/Organization", "active"), ("/Practitioner", "active"), ("/Group", "actual"),
                       ("/Group", "exclude"), ("/StructureDefinition", "abstract"),
                       ("/OperationDefinition", "instance"), ("/Schedule", "active")):
        refused(api, path, {code: "1"}, code, "1")
    # Patient `deceased` is `deceased.exists() and deceased != false`: a boolean too
    refused(api, "/Patient", {"deceased": "alive"}, "deceased", "alive")
    # a system search over several types whose parameter is boolean on each
    refused(api, "/", {"_type": "Patient,Organization", "active": "yes"}, "active", "yes")
    assert found(api, "/Group", {"identifier": f"urn:tt|{t}", "actual": "true"}) == [g["id"]]


def test_boolean_rule_inside_chains_has_and_filter(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:12]
    p = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": t}], "active": True})
    o = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "identifier": [{"system": "urn:tt", "value": t}], "subject": {"reference": f"Patient/{p['id']}"}})
    create(api, {"resourceType": "Group", "type": "person", "actual": True,
                 "member": [{"entity": {"reference": f"Patient/{p['id']}"}}]})
    refused(api, "/Observation", {"subject:Patient.active": "yes"}, "subject:Patient.active", "yes")
    refused(api, "/Observation", {"subject.active": "yes"}, "subject.active", "yes")
    refused(api, "/Patient", {"general-practitioner.active": "nope"}, "general-practitioner.active", "nope")
    refused(api, "/Patient", {"_has:Group:member:actual": "yes"}, "_has:Group:member:actual", "yes")
    refused(api, "/Patient", {"_filter": "active eq yes"}, "_filter", "active", "yes")
    refused(api, "/Patient", {"_filter": "active ne maybe"}, "_filter", "active", "maybe")
    mine = {"identifier": f"urn:tt|{t}"}
    assert found(api, "/Observation", {**mine, "subject:Patient.active": "true"}) == [o["id"]]
    assert found(api, "/Patient", {**mine, "_has:Group:member:actual": "true"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "_filter": "active eq true"}) == [p["id"]]


def test_token_modifiers_that_cannot_apply_to_the_elements_are_refused(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:12]
    mr = "http://terminology.hl7.org/CodeSystem/v2-0203"
    p = create(api, {"resourceType": "Patient", "gender": "female", "active": True, "identifier": [
        {"type": {"coding": [{"system": mr, "code": "MR"}], "text": f"Medical record {t}"},
         "system": "urn:tt", "value": t}]})
    # :of-type: "only for identifier"
    refused(api, "/Patient", {"gender:of-type": f"{mr}|MR|{t}"}, "gender:of-type", "of-type")
    refused(api, "/Observation", {"code:of-type": f"{mr}|MR|{t}"}, "code:of-type", "of-type")
    # :text reads CodeableConcept.text, Coding.display or Identifier.type.text; booleans, codes, strings and
    # ContactPoints have none
    refused(api, "/Patient", {"active:text": "yes"}, "active:text", "text")
    refused(api, "/Patient", {"gender:text": "fem"}, "gender:text", "text")
    refused(api, "/Patient", {"email:text": "x"}, "email:text", "text")
    refused(api, "/CodeSystem", {"version:text": "1"}, "version:text", "text")
    # terminology modifiers judge codes of a code system: not booleans, identifiers or contact points
    refused(api, "/Patient", {"active:in": "http://example.org/ValueSet/x"}, "active:in", "in")
    refused(api, "/Patient", {"active:below": "urn:x|true"}, "active:below", "below")
    refused(api, "/Patient", {"identifier:not-in": "http://example.org/ValueSet/x"}, "identifier:not-in", "not-in")
    refused(api, "/Patient", {"phone:above": "urn:x|1"}, "phone:above", "above")
    # and :missing takes true or false only
    refused(api, "/Patient", {"active:missing": "yes"}, "active:missing", "yes")
    # the modifiers that do apply still work
    assert found(api, "/Patient", {"identifier:of-type": f"{mr}|MR|{t}"}) == [p["id"]]
    assert found(api, "/Patient", {"identifier:text": f"medical record {t}"}) == [p["id"]]
    assert found(api, "/Patient", {"identifier": f"urn:tt|{t}", "active:missing": "false"}) == [p["id"]]


def test_a_code_is_searched_with_the_system_its_required_binding_implies(api: FhirApi) -> None:
    """A `code` carries no system; its required binding implies one (R4 datatypes.html#code), so
    `gender=http://hl7.org/fhir/administrative-gender|female` finds female patients, and a system the binding
    does not draw from could never match: a 400."""
    t = uuid.uuid4().hex[:12]
    gender, address_use = "http://hl7.org/fhir/administrative-gender", "http://hl7.org/fhir/address-use"
    p = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": t}], "gender": "female",
                     "address": [{"use": "home", "city": "Lyon"}]})
    o = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "identifier": [{"system": "urn:tt", "value": t}], "subject": {"reference": f"Patient/{p['id']}"}})
    mine = {"identifier": f"urn:tt|{t}"}
    assert found(api, "/Patient", {**mine, "gender": f"{gender}|female"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "gender": f"{gender}|"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "gender": f"{gender}|male"}) == []
    assert found(api, "/Patient", {**mine, "gender:not": f"{gender}|male"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "address-use": f"{address_use}|home"}) == [p["id"]]  # Address.use
    assert found(api, "/Observation", {**mine, "status": "http://hl7.org/fhir/observation-status|final"}) == [o["id"]]
    assert found(api, "/Observation", {**mine, "subject:Patient.gender": f"{gender}|female"}) == [o["id"]]
    assert found(api, "/Patient", {**mine, "_filter": f"gender eq {gender}|female"}) == [p["id"]]
    # the forms that worked before still do
    assert found(api, "/Patient", {**mine, "gender": "female"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "gender": "|female"}) == [p["id"]]
    refused(api, "/Patient", {"gender": "urn:x|female"}, "gender", "urn:x|female", gender)
    refused(api, "/Observation", {"subject:Patient.gender": "urn:x|female"}, "subject:Patient.gender", "urn:x|female")
    # a composite's code component: DocumentReference relationship = relatesto $ relation
    doc = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": {"contentType": "text/plain", "title": t}}]}
    first = create(api, doc)
    second = create(api, {**doc, "relatesTo": [{"code": "replaces",
                                                "target": {"reference": f"DocumentReference/{first['id']}"}}]})
    relation = "http://hl7.org/fhir/document-relationship-type"
    assert found(api, "/DocumentReference", {"relationship": f"DocumentReference/{first['id']}${relation}|replaces"}) \
        == [second["id"]]
    refused(api, "/DocumentReference", {"relationship": f"DocumentReference/{first['id']}$urn:x|replaces"},
            "relationship", "urn:x|replaces")


def test_terminology_modifiers_on_codes_use_the_system_their_binding_implies(api: FhirApi) -> None:
    """`gender:in` a value set of administrative-gender codes finds the patients with one of those codes,
    though a `code` is stored without a system; `:not-in` the others."""
    t = uuid.uuid4().hex[:12]
    gender = "http://hl7.org/fhir/administrative-gender"
    female = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": t}],
                          "gender": "female"})
    male = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": t}], "gender": "male"})
    vs_url = f"http://example.org/{t}/ValueSet/female-or-other"
    create(api, {"resourceType": "ValueSet", "status": "active", "url": vs_url, "compose": {"include": [
        {"system": gender, "concept": [{"code": "female"}, {"code": "other"}]}]}})
    whole_url = f"http://example.org/{t}/ValueSet/any-gender"
    create(api, {"resourceType": "ValueSet", "status": "active", "url": whole_url,
                 "compose": {"include": [{"system": gender}]}})
    other_url = f"http://example.org/{t}/ValueSet/elsewhere"
    create(api, {"resourceType": "ValueSet", "status": "active", "url": other_url, "compose": {"include": [
        {"system": "urn:elsewhere", "concept": [{"code": "female"}]}]}})
    mine = {"identifier": f"urn:tt|{t}"}
    assert found(api, "/Patient", {**mine, "gender:in": vs_url}) == [female["id"]]
    assert found(api, "/Patient", {**mine, "gender:not-in": vs_url}) == [male["id"]]
    assert found(api, "/Patient", {**mine, "gender:in": whole_url}) == sorted([female["id"], male["id"]])
    assert found(api, "/Patient", {**mine, "gender:in": other_url}) == []  # the same code of another system
    refused(api, "/Patient", {"gender:below": "urn:x|female"}, "gender:below", "urn:x|female")

def test_the_boolean_only_token_parameters_are_worked_out_from_the_r4_model() -> None:
    """The table behind the rule: every token parameter of every R4 type, its element types from the model;
    the boolean-only ones are exactly R4's boolean token parameters, and only expressions beyond the model
    walk (DeviceDefinition `classification`, whose path R4 does not define) are left unjudged."""
    booleans, unknown = set(), set()
    for rtype in resource_types():
        for code, param in params_of(rtype).items():
            if param.type != "token":
                continue
            reached = value_types(param.expr)
            if reached is None:
                unknown.add(f"{rtype}.{code}")
            elif reached == {"boolean"}:
                booleans.add(f"{rtype}.{code}")
    assert booleans == {
        "Group.actual", "Group.exclude", "HealthcareService.active", "ImplementationGuide.experimental",
        "OperationDefinition.instance", "OperationDefinition.system", "OperationDefinition.type",
        "Organization.active", "OrganizationAffiliation.active", "Patient.active", "Patient.deceased",
        "Practitioner.active", "PractitionerRole.active", "RelatedPerson.active", "Schedule.active",
        "StructureDefinition.abstract", "StructureDefinition.experimental"}
    assert unknown == {"DeviceDefinition.classification"}
    assert value_types(params_of("Group")["value"].expr) == {"CodeableConcept", "boolean"}  # not boolean-only
    assert value_types(params_of("Patient")["identifier"].expr) == {"Identifier"}
    assert value_types(params_of("Patient")["gender"].expr) == {"code"}
    assert code_systems(params_of("Patient")["gender"].expr) == {"http://hl7.org/fhir/administrative-gender"}
    assert code_systems(params_of("Patient")["address-use"].expr) == {"http://hl7.org/fhir/address-use"}
    assert code_systems(params_of("CodeSystem")["code"].expr) is None  # a concept's code: no binding


def test_a_code_outside_its_required_value_set_is_a_400(api: FhirApi) -> None:
    """`gender=males` names no code of administrative-gender: validation never stores it, so the search
    could only ever answer an empty page; it is a 400 naming the parameter, the value and the codes the
    value set has, with or without the implied system, in OR lists, under `:not`, in chains and composites
    of codes, on every type whose parameter reaches such codes (R4 terminologies.html#required)."""
    t = uuid.uuid4().hex[:12]
    gender = "http://hl7.org/fhir/administrative-gender"
    p = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": t}], "gender": "male"})
    o = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": t},
                     "subject": {"reference": f"Patient/{p['id']}"}})
    mine = {"identifier": f"urn:tt|{t}"}
    text = refused(api, "/Patient", {"gender": "males"}, "gender", "males", "female", "male", "other", "unknown")
    assert "required" in text
    refused(api, "/Patient", {"gender": "males"}, "gender", "males", headers=LENIENT)
    refused(api, "/Patient", {"gender": f"{gender}|males"}, "gender", "males")
    refused(api, "/Patient", {"gender": "|Male"}, "gender", "Male")  # codes are case-sensitive
    refused(api, "/Patient", {"gender": "female,males"}, "gender", "males")
    refused(api, "/Patient", {"gender:not": "males"}, "gender:not", "males")
    refused(api, "/Practitioner", {"gender": "males"}, "gender", "males")
    refused(api, "/Observation", {"subject:Patient.gender": "males"}, "subject:Patient.gender", "males")
    refused(api, "/Observation", {"status": "done"}, "status", "done", "final")
    refused(api, "/DocumentReference", {"status": "final"}, "status", "final", "current")
    refused(api, "/Patient", {"_has:Observation:subject:status": "done"}, "_has:Observation:subject:status", "done")
    refused(api, "/Patient", {"_filter": "gender eq males"}, "_filter", "gender", "males")
    # value sets R4's JSON schema leaves open are enumerated from their ValueSet too
    refused(api, "/MedicationRequest", {"status": "done"}, "status", "done", "active", "on-hold")
    refused(api, "/ServiceRequest", {"intent": "orders"}, "intent", "orders", "original-order")
    refused(api, "/CarePlan", {"intent": "orders"}, "intent", "orders", "option")
    assert found(api, "/MedicationRequest", {"status": "active,on-hold,cancelled", "_id": t}) == []
    assert found(api, "/ServiceRequest", {"intent": "reflex-order", "_id": t}) == []
    # every code of the value set is still searched as before
    assert found(api, "/Patient", {**mine, "gender": "male"}) == [p["id"]]
    assert found(api, "/Patient", {**mine, "gender": "female,other,unknown"}) == []
    assert found(api, "/Patient", {**mine, "gender:not": "female"}) == [p["id"]]
    assert found(api, "/Observation", {"code:text": t, "subject:Patient.gender": "male"}) == [o["id"]]
    assert found(api, "/Observation", {"code:text": t, "status": "final"}) == [o["id"]]
    # a token over codes without an enumerated value set (a concept's code, a language) is not judged
    assert found(api, "/Patient", {**mine, "language": "xx-unknown"}) == []


def test_the_codes_of_required_value_sets_come_from_the_validation_table() -> None:
    assert code_values(params_of("Patient")["gender"].expr) == {"male", "female", "other", "unknown"}
    assert code_values(params_of("Patient")["address-use"].expr) == {"home", "work", "temp", "old", "billing"}
    assert code_values(params_of("Patient")["identifier"].expr) is None
    assert code_values(params_of("CodeSystem")["code"].expr) is None
    assert code_values(params_of("Patient")["language"].expr) is None
    # the schema types MedicationRequest.status as a plain code; its value set is a list of codes
    assert code_values(params_of("MedicationRequest")["status"].expr) == {
        "active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}


def test_without_validation_a_stored_code_is_searched_as_written(
        server_factory: Callable[..., ServerProcess]) -> None:
    """With VALIDATION_ENABLED=false a resource is stored as sent, `gender: males` included: it is then
    found by that code (and a conditional delete reaches it) instead of the search being refused."""
    server = server_factory("sqlite", validation_enabled=False)
    t = uuid.uuid4().hex[:12]
    with server.api() as api:
        p = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:tt", "value": t}],
                         "gender": "males"})
        assert found(api, "/Patient", {"identifier": f"urn:tt|{t}", "gender": "males"}) == [p["id"]]
        r = api.delete("/Patient", params={"identifier": f"urn:tt|{t}", "gender": "males"})
        assert r.status_code in (200, 204), r.text
        assert found(api, "/Patient", {"identifier": f"urn:tt|{t}"}) == []
