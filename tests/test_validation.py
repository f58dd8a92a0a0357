"""R4 validation of every resource written: 400 with one issue per problem, nothing stored; $validate."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}
OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}

# (name, resource, expression of an issue the 400 must carry)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown element", {"resourceType": "Patient", "nmae": [{"family": "Doe"}]}, "Patient.nmae"),
    ("bad date", {"resourceType": "Patient", "birthDate": "notadate"}, "Patient.birthDate"),
    ("impossible month", {"resourceType": "Patient", "birthDate": "2020-13-01"}, "Patient.birthDate"),
    ("30 February", {"resourceType": "Patient", "birthDate": "2020-02-30"}, "Patient.birthDate"),
    ("29 February of a common year", {**OBS, "effectiveDateTime": "1900-02-29T10:00:00Z"},
     "Observation.effectiveDateTime"),
    ("31 April", {**OBS, "issued": "2024-04-31T10:00:00Z"}, "Observation.issued"),
    ("bad dateTime", {**OBS, "effectiveDateTime": "2020-01-01T10:00"}, "Observation.effectiveDateTime"),
    ("bad instant", {**OBS, "issued": "2020-01-01"}, "Observation.issued"),
    ("bad time", {**OBS, "valueTime": "25:00:00"}, "Observation.valueTime"),
    ("bad id", {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "a b"}]},
     "Patient.contained[0].id"),
    ("uri with space", {"resourceType": "Patient", "implicitRules": "http://x y"}, "Patient.implicitRules"),
    ("code with spaces", {"resourceType": "Patient", "language": " en"}, "Patient.language"),
    ("decimal as string", {**OBS, "valueQuantity": {"value": "1.5"}}, "Observation.valueQuantity.value"),
    ("integer with fraction", {**OBS, "valueInteger": 1.5}, "Observation.valueInteger"),
    ("integer with a zero fraction", {**OBS, "valueInteger": 1.0}, "Observation.valueInteger"),
    ("positiveInt with a zero fraction", {"resourceType": "Patient", "multipleBirthInteger": 2.0},
     "Patient.multipleBirthInteger"),
    ("unsignedInt with a zero fraction in a contained resource", {
        "resourceType": "Patient", "managingOrganization": {"reference": "#m"}, "contained": [
            {"resourceType": "Media", "id": "m", "status": "completed", "content": {"contentType": "text/plain"},
             "frames": 1.0}]}, "Patient.contained[0].frames"),
    ("integer over 32 bits", {**OBS, "valueInteger": 2**31}, "Observation.valueInteger"),
    ("negative unsignedInt", {"resourceType": "Media", "status": "completed",
                              "content": {"contentType": "image/png", "size": -5}}, "Media.content.size"),
    ("zero positiveInt", {"resourceType": "Patient",
                          "extension": [{"url": "http://example.org/n", "valuePositiveInt": 0}]},
     "Patient.extension[0].valuePositiveInt"),
    ("bad base64", {"resourceType": "Binary", "contentType": "text/plain", "data": "not base64!"}, "Binary.data"),
    ("boolean as string", {"resourceType": "Patient", "active": "true"}, "Patient.active"),
    ("missing required element", {"resourceType": "Observation", "status": "final"}, "Observation.code"),
    ("missing required primitive", {"resourceType": "Observation", "code": {"text": "x"}}, "Observation.status"),
    ("missing required choice", {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                                 "subject": {"reference": "Patient/1"}}, "MedicationRequest.medication"),
    ("array for a single element", {"resourceType": "Patient", "gender": ["male"]}, "Patient.gender"),
    ("single value for an array", {"resourceType": "Patient", "name": {"family": "Doe"}}, "Patient.name"),
    ("two value[x]", {**OBS, "valueString": "a", "valueBoolean": True}, "Observation.value"),
    ("required binding", {"resourceType": "Patient", "gender": "xyz"}, "Patient.gender"),
    ("required binding (status)", {**OBS, "status": "done"}, "Observation.status"),
    # required bindings R4's JSON schema leaves as a plain `code`: their codes come from the value set
    ("required binding the schema leaves open", {"resourceType": "MedicationRequest", "status": "done",
                                                 "intent": "order", "medicationCodeableConcept": {"text": "x"},
                                                 "subject": {"reference": "Patient/1"}}, "MedicationRequest.status"),
    ("required binding the schema leaves open (intent)", {"resourceType": "ServiceRequest", "status": "active",
                                                          "intent": "orders", "subject": {"reference": "Patient/1"}},
     "ServiceRequest.intent"),
    ("required binding the schema leaves open (nested)", {"resourceType": "CarePlan", "status": "active",
                                                          "intent": "plan", "subject": {"reference": "Patient/1"},
                                                          "activity": [{"detail": {"kind": "Patient",
                                                                                   "status": "completed"}}]},
     "CarePlan.activity[0].detail.kind"),
    ("empty object", {"resourceType": "Patient", "telecom": [{}]}, "Patient.telecom[0]"),
    ("empty array", {"resourceType": "Patient", "name": []}, "Patient.name"),
    ("empty string", {"resourceType": "Patient", "name": [{"family": ""}]}, "Patient.name[0].family"),
    ("primitive extension shape", {"resourceType": "Patient", "_birthDate": {"extension": "x"}},
     "Patient._birthDate.extension"),
    ("unknown element in primitive extension", {"resourceType": "Patient", "_birthDate": {"value": 1}},
     "Patient._birthDate.value"),
    ("invalid contained resource", {"resourceType": "Patient", "contained": [
        {"resourceType": "Organization", "id": "o1", "active": "yes"}]}, "Patient.contained[0].active"),
    ("contained of no type", {"resourceType": "Patient", "contained": [{"resourceType": "Starship"}]},
     "Patient.contained[0].resourceType"),
    ("null standing for nothing", {"resourceType": "Patient", "name": [{"given": ["Ann", None]}]},
     "Patient.name[0].given[1]"),
    ("null in both arrays", {"resourceType": "Patient", "name": [{"given": ["Ann", None],
                                                               "_given": [None, None]}]}, "Patient.name[0].given[1]"),
    ("primitive arrays of two lengths", {"resourceType": "Patient", "name": [{"given": ["Ann"], "_given": [
        None, {"extension": [{"url": "http://example.org/q", "valueCode": "CL"}]}]}]}, "Patient.name[0].given"),
    ("reference shape", {"resourceType": "Patient", "managingOrganization": {"reference": "Organisation/1"}},
     "Patient.managingOrganization.reference"),
    ("bundle rule", {"resourceType": "Bundle", "type": "collection", "total": 2}, "Bundle"),
    ("document without Composition", {"resourceType": "Bundle", "type": "document", "timestamp": "2020-01-01T00:00:00Z",
                                      "identifier": {"system": "urn:x", "value": "1"},
                                      "entry": [{"fullUrl": "urn:uuid:0b6c2d7e-4a4c-4b0a-9d65-4c3b0f7c6a01",
                                                 "resource": {"resourceType": "Patient"}}]}, "Bundle"),
    # Invariants (constraints of the StructureDefinitions)
    ("ext-1: value and extensions", {"resourceType": "Patient", "extension": [
        {"url": "http://example.org/a", "valueString": "x",
         "extension": [{"url": "b", "valueString": "y"}]}]}, "Patient.extension[0]"),
    ("ext-1: neither", {"resourceType": "Patient", "extension": [{"url": "http://example.org/a"}]},
     "Patient.extension[0]"),
    ("ext-1 in a primitive extension", {"resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": {
        "extension": [{"url": "http://example.org/a"}]}}, "Patient._birthDate.extension[0]"),
    ("ele-1: an element of an id only", {"resourceType": "Patient", "name": [{"id": "n1"}]}, "Patient.name[0]"),
    ("att-1: data without contentType", {"resourceType": "Patient", "photo": [{"data": "aGk="}]}, "Patient.photo[0]"),
    ("qty-3: code without system", {**OBS, "valueQuantity": {"value": 1, "code": "mg"}}, "Observation.valueQuantity"),
    ("cpt-2: value without system", {"resourceType": "Patient", "telecom": [{"value": "555"}]}, "Patient.telecom[0]"),
    ("pat-1: empty contact", {"resourceType": "Patient", "contact": [{"gender": "male"}]}, "Patient.contact[0]"),
    ("app-2: start without end", {"resourceType": "Appointment", "status": "booked",
                                  "participant": [{"status": "accepted", "actor": {"display": "x"}}],
                                  "start": "2020-01-01T10:00:00Z"}, "Appointment"),
    ("per-1: start after end", {**OBS, "effectivePeriod": {"start": "2020-01-02", "end": "2020-01-01T23:00:00Z"}},
     "Observation.effectivePeriod"),
    ("rng-2: low above high", {**OBS, "valueRange": {"low": {"value": 5, "system": "http://unitsofmeasure.org",
                                                             "code": "mg"},
                                                     "high": {"value": 3, "system": "http://unitsofmeasure.org",
                                                              "code": "mg"}}}, "Observation.valueRange"),
    ("ref-1: # names no contained resource", {"resourceType": "Patient", "managingOrganization": {
        "reference": "#org1"}}, "Patient.managingOrganization"),
    ("dom-2: nested contained", {"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
                                 "contained": [{"resourceType": "Organization", "id": "o", "contained": [
                                     {"resourceType": "Organization", "id": "p"}]}]}, "Patient.contained[0]"),
    ("dom-3: contained but not referenced", {"resourceType": "Patient", "contained": [
        {"resourceType": "Organization", "id": "o", "name": "x"}]}, "Patient.contained[0]"),
    ("dom-4: contained with versionId", {"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
                                         "contained": [{"resourceType": "Organization", "id": "o",
                                                        "meta": {"versionId": "1"}}]}, "Patient.contained[0]"),
    ("txt-1: script", {"resourceType": "Patient", "text": {"status": "generated", "div":
        '<div xmlns="http://www.w3.org/1999/xhtml">hi<script>alert(1)</script></div>'}}, "Patient.text.div"),
    ("txt-1: event attribute", {"resourceType": "Patient", "text": {"status": "generated", "div":
        '<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="steal()">hi</p></div>'}}, "Patient.text.div"),
    ("txt-1: javascript link", {"resourceType": "Patient", "text": {"status": "generated", "div":
        '<div xmlns="http://www.w3.org/1999/xhtml"><a href=" JavaScript:x()">hi</a></div>'}}, "Patient.text.div"),
    ("txt-1: data link", {"resourceType": "Patient", "text": {"status": "generated", "div":
        '<div xmlns="http://www.w3.org/1999/xhtml"><a href="java\tscript:x()">a</a><a href="data:text/html,x">b</a>'
        '</div>'}}, "Patient.text.div"),
    ("txt-1: not XHTML", {"resourceType": "Patient", "text": {"status": "generated", "div": "<div>hi"}},
     "Patient.text.div"),
    ("txt-1: no namespace", {"resourceType": "Patient", "text": {"status": "generated", "div": "<div>hi</div>"}},
     "Patient.text.div"),
    ("txt-1: form", {"resourceType": "Patient", "text": {"status": "generated", "div":
        '<div xmlns="http://www.w3.org/1999/xhtml">a<form><input name="x"/></form></div>'}}, "Patient.text.div"),
    ("txt-1: entity expansion", {"resourceType": "Patient", "text": {"status": "generated", "div":
        '<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<div xmlns="http://www.w3.org/1999/xhtml">&b;</div>'}}, "Patient.text.div"),
    ("txt-2: no text", {"resourceType": "Patient", "text": {"status": "generated", "div":
        '<div xmlns="http://www.w3.org/1999/xhtml"> <p/> </div>'}}, "Patient.text.div"),
    ("txt-1 in a contained resource", {"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
                                       "contained": [{"resourceType": "Organization", "id": "o", "text": {
                                           "status": "generated", "div": "<div>x</div>"}}]},
     "Patient.contained[0].text.div"),
]


def issue_expressions(r: httpx.Response) -> list[str]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


@pytest.mark.parametrize(("name", "resource", "expression"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resource_is_refused_naming_the_element(api: FhirApi, name: str, resource: dict[str, Any],
                                                        expression: str) -> None:
    rid = f"inv-{uuid.uuid4().hex[:12]}"
    rtype = resource["resourceType"]
    r = api.put(f"/{rtype}/{rid}", json={**resource, "id": rid}, headers=FHIR)
    assert r.status_code == 400, r.text
    assert expression in issue_expressions(r), r.text
    issue = next(i for i in r.json()["issue"] if expression in i.get("expression", []))
    assert issue["severity"] == "error" and len(issue["diagnostics"]) > 10
    assert api.get(f"/{rtype}/{rid}").status_code == 404  # nothing stored
    assert api.post(f"/{rtype}", json=resource, headers=FHIR).status_code == 400


def test_every_problem_is_one_issue(api: FhirApi) -> None:
    r = api.post("/Patient", json={"resourceType": "Patient", "gender": "xyz", "birthDate": "notadate",
                                   "nmae": [{"family": "x"}]}, headers=FHIR)
    assert r.status_code == 400
    assert sorted(issue_expressions(r)) == ["Patient.birthDate", "Patient.gender", "Patient.nmae"]
    assert all(i["severity"] == "error" for i in r.json()["issue"])


def test_non_finite_number_is_refused(api: FhirApi) -> None:
    body = b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": NaN}}'
    r = api.post("/Observation", content=body, headers=FHIR)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


def test_valid_resources_with_primitive_extensions_and_contained_are_stored(api: FhirApi) -> None:
    patient = {
        "resourceType": "Patient",
        "birthDate": "1970-03",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1970-03-30T04:00:00+01:00"}]},
        "name": [{"given": ["Ann", "Lee"], "_given": [None, {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier", "valueCode": "CL"}]}]}],
        "contained": [{"resourceType": "Organization", "id": "org", "name": "Clinic"}],
        "managingOrganization": {"reference": "#org"},
        "generalPractitioner": [{"reference": "Practitioner/p1"}, {"reference": "https://other.example/fhir/Practitioner/9"},
                                {"reference": "urn:uuid:7f1b2e7a-1a51-4e3e-8b2a-6f0a2b1c9d11"}],
        "multipleBirthInteger": 2,
    }
    r = api.post("/Patient", json=patient, headers=FHIR)
    assert r.status_code == 201, r.text
    assert r.json()["name"][0]["_given"][1]["extension"][0]["valueCode"] == "CL"


def test_transaction_entry_issue_names_the_entry(api: FhirApi) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "active": True}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "yesterday"},
         "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 400, r.text
    assert "Bundle.entry[1].resource.birthDate" in issue_expressions(r)


def test_batch_entry_outcome_carries_the_issues(api: FhirApi) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    read = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": second["response"]["location"].split("/_history")[0]}}]}, headers=FHIR)
    assert "T" in read.json()["entry"][0]["response"]["lastModified"]  # an R4 instant, not an HTTP date
    assert first["response"]["status"].startswith("400")
    assert first["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[0].resource.gender"]
    assert second["response"]["status"].startswith("201")


# -- $validate ---------------------------------------------------------------------------------------
def test_validate_on_the_type(api: FhirApi) -> None:
    r = api.post("/Patient/$validate", json={"resourceType": "Patient", "birthDate": "1999-02-30x"}, headers=FHIR)
    assert r.status_code == 200
    assert issue_expressions(r) == ["Patient.birthDate"]
    ok = api.post("/Patient/$validate", json={"resourceType": "Patient", "active": True}, headers=FHIR)
    assert ok.status_code == 200
    assert [i["severity"] for i in ok.json()["issue"]] == ["information"]


def test_validate_with_parameters_mode_and_profile(api: FhirApi) -> None:
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Observation", "status": "final"}},
        {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"},
    ]}
    r = api.post("/Observation/$validate", json=params, headers=FHIR)
    assert r.status_code == 200
    issues = r.json()["issue"]
    assert {"severity": "error", "expr": ["Observation.code"]} in [
        {"severity": i["severity"], "expr": i.get("expression")} for i in issues]
    assert any(i["severity"] == "warning" and i["code"] == "not-supported" for i in issues)
    assert api.post("/Observation/$validate?mode=merge", json=OBS, headers=FHIR).status_code == 400


def test_validate_on_an_instance(api: FhirApi) -> None:
    pid = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
    stored = api.get(f"/Patient/{pid}/$validate")
    assert stored.status_code == 200 and stored.json()["issue"][0]["severity"] == "information"
    wrong_id = api.post(f"/Patient/{pid}/$validate?mode=update", json={"resourceType": "Patient", "id": "other"},
                        headers=FHIR)
    assert wrong_id.status_code == 200 and "Patient.id" in issue_expressions(wrong_id)
    assert api.post(f"/Patient/{pid}/$validate?mode=delete").status_code == 200
    assert api.post("/Patient/not-there/$validate?mode=delete").status_code == 404
    assert api.get(f"/Patient/{pid}").status_code == 200  # $validate changes nothing


# -- stored before validation: still readable, listed by `fhirvault check` -------------------------------
def test_check_lists_stored_resources_that_now_fail(server_factory: Any) -> None:
    server = server_factory(validation_enabled=False)
    # A plain client: these responses are not valid R4 on purpose, which FhirApi's check would flag.
    with httpx.Client(base_url=server.base, headers=server.auth_headers(), timeout=60) as api:
        bad = api.post("/Patient", json={"resourceType": "Patient", "gender": "robot"}, headers=FHIR)
        assert bad.status_code == 201  # validation off: stored as sent
        good = api.post("/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=FHIR)
        obs = api.post("/Observation", json={"resourceType": "Observation", "status": "final"}, headers=FHIR)
        assert good.status_code == obs.status_code == 201
        assert api.get(f"/Patient/{bad.json()['id']}").status_code == 200
    done = server.cli("check", "Patient")
    assert done.returncode == 1, done.stderr
    assert f"Patient/{bad.json()['id']}\tPatient.gender\t" in done.stdout
    assert good.json()["id"] not in done.stdout and "Observation" not in done.stdout
    everything = server.cli("check")
    assert f"Observation/{obs.json()['id']}\tObservation.code\t" in everything.stdout
    assert server.cli("check", "Spaceship").returncode == 2


def test_attachment_size_r4_cannot_carry_is_left_out() -> None:
    """R4's Attachment.size is an unsignedInt: content of 2 GiB or more is described without it."""
    from fhirvault.fhir.validation import attachment_size, validate_resource

    assert attachment_size(2**31 - 1) == {"size": 2**31 - 1}
    assert attachment_size(2**31) == {}
    media = {"resourceType": "Media", "status": "completed", "content": {"contentType": "video/mp4", "size": 2**31}}
    assert [i.expression for i in validate_resource(media)] == ["Media.content.size"]


def test_leap_days_are_valid_dates(api: FhirApi) -> None:
    """29 February is refused only outside leap years (2000 is one, 1900 is not)."""
    for day in ("2024-02-29", "2000-02-29"):
        moment = f"{day}T10:00:00Z"
        r = api.post("/Observation", json={**OBS, "effectiveDateTime": moment, "issued": moment}, headers=FHIR)
        assert r.status_code == 201, r.text
        assert api.post("/Patient", json={"resourceType": "Patient", "birthDate": day}, headers=FHIR).status_code == 201


def test_invariant_issues_name_the_rule(api: FhirApi) -> None:
    r = api.post("/Patient", json={"resourceType": "Patient", "telecom": [{"value": "555"}]}, headers=FHIR)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["code"] == "invariant" and "(cpt-2)" in issue["diagnostics"]


def test_valid_narratives_contained_and_extensions_are_stored(api: FhirApi) -> None:
    div = ('<div xmlns="http://www.w3.org/1999/xhtml"><p class="x" style="color: red">Ann <b>Doe</b></p>'
           '<table border="1"><tr><td colspan="2">1</td></tr></table><a href="Patient/1">p</a>'
           '<img src="#photo" alt="photo"/><ul><li xml:lang="en">x</li></ul>&lt;&amp;</div>')
    resource = {"resourceType": "Patient", "text": {"status": "generated", "div": div},
                "contained": [{"resourceType": "Organization", "id": "o", "name": "Org"},
                              {"resourceType": "Practitioner", "id": "p", "name": [{"family": "X"}]}],
                "managingOrganization": {"reference": "#o"}, "generalPractitioner": [{"reference": "#p"}],
                "extension": [{"url": "http://example.org/nested", "extension": [
                    {"url": "a", "valueString": "x"}]}],
                "telecom": [{"system": "phone", "value": "555"}], "contact": [{"name": {"family": "Y"}}]}
    r = api.post("/Patient", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text


def test_a_number_beyond_64_bits_is_judged_not_a_500(api: FhirApi) -> None:
    obs = {**OBS, "valueQuantity": {"value": 123456789012345678901234567890}}
    r = api.post("/Observation", json=obs, headers=FHIR)
    assert r.status_code == 201, r.text
    r = api.post("/Observation", json={**OBS, "valueInteger": 123456789012345678901234567890}, headers=FHIR)
    assert r.status_code == 400 and "out of range" in r.json()["issue"][0]["diagnostics"]


def test_resources_inside_a_bundle_are_judged_as_their_own_roots(api: FhirApi) -> None:
    """ref-1 and dom-3 of an entry's resource look at its own contained resources, not the Bundle's; a
    contained resource may reference its siblings."""
    patient = {"resourceType": "Patient",
               "contained": [{"resourceType": "Organization", "id": "o", "name": "x"},
                             {"resourceType": "Practitioner", "id": "p", "name": [{"family": "x"}],
                              "extension": [{"url": "http://example.org/org", "valueReference": {"reference": "#o"}}]}],
               "managingOrganization": {"reference": "#o"}, "generalPractitioner": [{"reference": "#p"}]}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:0b6c2d7e-4a4c-4b0a-9d65-4c3b0f7c6a01", "resource": patient}]}
    assert api.post("/Bundle", json=bundle, headers=FHIR).status_code == 201
    broken = {**patient, "generalPractitioner": [{"reference": "#q"}]}
    r = api.post("/Bundle", json={**bundle, "entry": [{**bundle["entry"][0], "resource": broken}]}, headers=FHIR)
    assert r.status_code == 400
    assert {"Bundle.entry[0].resource.generalPractitioner[0]", "Bundle.entry[0].resource.contained[1]"} <= set(
        issue_expressions(r))


def test_order_invariants_leave_what_they_cannot_compare(api: FhirApi) -> None:
    """per-1 and rng-2 as FHIRPath judges them: different precisions that overlap, or different units,
    are no failure."""
    for value in ({"effectivePeriod": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01"}},
                  {"effectivePeriod": {"start": "2020-01-01", "end": "2020-01-01"}},
                  {"valueRange": {"low": {"value": 5, "unit": "g"}, "high": {"value": 3, "unit": "mg"}}},
                  {"valueRange": {"low": {"value": 3}, "high": {"value": 3}}}):
        r = api.post("/Observation", json={**OBS, **value}, headers=FHIR)
        assert r.status_code == 201, (value, r.text)


def test_an_html_entity_in_the_narrative_is_refused_saying_what_to_write(api: FhirApi) -> None:
    """R4 narrative.html#xhtml: XHTML in FHIR is XML, with no HTML entities; &#160; stands for &nbsp;."""
    div = '<div xmlns="http://www.w3.org/1999/xhtml">a&nbsp;b</div>'
    r = api.post("/Patient", json={"resourceType": "Patient", "text": {"status": "generated", "div": div}},
                 headers=FHIR)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.text.div"]
    assert "&#160;" in r.json()["issue"][0]["diagnostics"]
    numeric = div.replace("&nbsp;", "&#160;")
    r = api.post("/Patient", json={"resourceType": "Patient", "text": {"status": "generated", "div": numeric}},
                 headers=FHIR)
    assert r.status_code == 201, r.text


def test_integer_written_with_an_exponent_is_refused_everywhere(api: FhirApi) -> None:
    """R4's integer regex `-?([0]|([1-9][0-9]*))` has no fraction or exponent; JSON schema's "integer" would
    take `1e2`. Refused in an extension, a Bundle entry and a patch result; decimals may use either."""
    ext = ('{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e2},'
           '"extension":[{"url":"http://example.org/n","valueInteger":1e2}]}')
    r = api.post("/Observation", content=ext, headers=FHIR)
    assert r.status_code == 400, r.text
    assert issue_expressions(r) == ["Observation.extension[0].valueInteger"]
    assert "1e2" in r.json()["issue"][0]["diagnostics"]
    bundle = ('{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient",'
              '"multipleBirthInteger":2E0},"request":{"method":"POST","url":"Patient"}}]}')
    r = api.post("", content=bundle, headers=FHIR)
    assert r.status_code == 400, r.text
    assert "Bundle.entry[0].resource.multipleBirthInteger" in issue_expressions(r)
    r = api.post("/Patient", json={"resourceType": "Patient", "multipleBirthInteger": 2}, headers=FHIR)
    rid = r.json()["id"]
    r = api.patch(f"/Patient/{rid}", content='[{"op":"replace","path":"/multipleBirthInteger","value":3.0}]',
                  headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code in (400, 422), r.text
    assert api.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "1"


def test_an_issue_inside_a_primitive_extension_names_the_datatype(api: FhirApi) -> None:
    r = api.post("/Patient", json={"resourceType": "Patient", "_birthDate": {"extension": [
        {"url": "http://example.org/x", "valueDecimal": "1"}]}}, headers=FHIR)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Patient._birthDate.extension[0].valueDecimal"]
    assert "not a valid decimal" in issue["diagnostics"], issue


def test_a_contained_resource_without_id_is_refused_with_a_message_saying_so(api: FhirApi) -> None:
    r = api.post("/Patient", json={"resourceType": "Patient", "contained": [
        {"resourceType": "Organization", "name": "Clinic"}]}, headers=FHIR)
    assert r.status_code == 400, r.text
    issue = next(i for i in r.json()["issue"] if i["expression"] == ["Patient.contained[0]"])
    assert "has no id" in issue["diagnostics"] and "None" not in issue["diagnostics"], issue


def test_codes_of_bindings_that_are_not_required_stay_open(api: FhirApi) -> None:
    """`Expression.language` is bound extensibly (R4 expression-language), though R4's JSON schema lists
    three codes for it: a CQL identifier is valid and stored (it was refused as outside the list)."""
    for language in ("text/cql.identifier", "text/cql-expression", "text/fhirpath"):
        library = {"resourceType": "Library", "status": "active", "type": {"text": "logic-library"},
                   "extension": [{"url": "http://example.org/fhir/StructureDefinition/rule",
                                  "valueExpression": {"language": language, "expression": "InPopulation"}}]}
        r = api.post("/Library", json=library, headers=FHIR)
        assert r.status_code == 201, (language, r.text)


def test_resources_stored_inside_a_bundle_or_parameters_meet_the_same_rules(api: FhirApi) -> None:
    """A resource stored inside a Bundle or Parameters was not judged by the rules that need its datatypes:
    an integer written `1.0` was stored, and a bad date was "not a valid ?"."""
    inner = '{"resourceType":"Patient","multipleBirthInteger":1.0,"birthDate":"2025-02-30"}'
    stored_bundle = ('{"resourceType":"Bundle","type":"collection","entry":[{"fullUrl":"http://x.org/Patient/1",'
                     f'"resource":{inner}}}]}}')
    r = api.post("/Bundle", content=stored_bundle, headers=FHIR)
    assert r.status_code == 400, r.text
    text = r.text
    assert "Bundle.entry[0].resource.multipleBirthInteger" in issue_expressions(r) and "valid ?" not in text
    assert '"2025-02-30\\" is not a valid date' in text or "is not a valid date" in text, text
    params = '{"resourceType":"Parameters","parameter":[{"name":"p","resource":' + inner + '}]}'
    r = api.post("/Parameters", content=params, headers=FHIR)
    assert r.status_code == 400 and "Parameters.parameter[0].resource.multipleBirthInteger" in issue_expressions(r)


def test_a_primitive_with_only_an_id_and_strings_over_1_mb_are_refused(api: FhirApi) -> None:
    """ele-1 holds for primitives too: `_birthDate: {"id": "x"}` without a birthDate is an element with neither
    a value nor children (it was stored). R4 strings hold at most 1 MB (1024*1024 characters)."""
    given = {"given": ["a", None], "_given": [None, {"id": "x"}]}
    for resource, where in (({"resourceType": "Patient", "_birthDate": {"id": "x"}}, "Patient.birthDate"),
                            ({"resourceType": "Patient", "name": [given]}, "Patient.name[0].given[1]")):
        r = api.post("/Patient", json=resource, headers=FHIR)
        assert r.status_code == 400 and where in issue_expressions(r) and "ele-1" in r.text, r.text
    kept = {"resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": {"id": "x"},
            "_active": {"extension": [{"url": "http://example.org/why", "valueString": "unknown"}]}}
    assert api.post("/Patient", json=kept, headers=FHIR).status_code == 201
    long = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "x" * (1024 * 1024 + 1)}]},
                    headers=FHIR)
    assert long.status_code == 400 and "Patient.name[0].family" in issue_expressions(long) and "1 MB" in long.text
