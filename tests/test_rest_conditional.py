"""Conditional interactions over real HTTP on SQLite and PostgreSQL, each with 0, 1 and 2 matches (R4 http.html)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json"}
SYSTEM = "urn:test:cond"


def tag() -> str:
    return f"c{time.time_ns()}"


def patient(value: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], **extra}


def create(api: FhirApi, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = api.post(f"/{body['resourceType']}", json=body, headers={**FHIR, **headers})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def matching(api: FhirApi, value: str) -> list[dict[str, Any]]:
    bundle = api.get("/Patient", params={"identifier": f"{SYSTEM}|{value}"}).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Patient"]


# -- conditional create (If-None-Exist) ----------------------------------------------------------------
def test_conditional_create_with_0_1_and_2_matches(api: FhirApi) -> None:
    v = tag()
    cond = {"If-None-Exist": f"identifier={SYSTEM}|{v}"}
    first = api.post("/Patient", json=patient(v), headers={**FHIR, **cond})
    assert first.status_code == 201
    kept = api.post("/Patient", json=patient(v, gender="male"), headers={**FHIR, **cond})
    assert kept.status_code == 200 and kept.json()["id"] == first.json()["id"] and "gender" not in kept.json()
    create(api, patient(v))
    assert api.post("/Patient", json=patient(v), headers={**FHIR, **cond}).status_code == 412
    assert len(matching(api, v)) == 2


@pytest.mark.parametrize("criteria", ["nosuchparam=1", "_count=1", "_sort=-_lastUpdated", ""])
def test_unknown_or_empty_criteria_are_refused_everywhere(api: FhirApi, criteria: str) -> None:
    """A condition the server cannot evaluate never matches everything (nor nothing): 400, no change."""
    v = tag()
    existing = create(api, patient(v))
    if criteria:
        assert api.post("/Patient", json=patient(v), headers={**FHIR, "If-None-Exist": criteria}).status_code == 400
    assert api.put(f"/Patient?{criteria}", json=patient(v), headers=FHIR).status_code == 400
    assert api.delete(f"/Patient?{criteria}").status_code == 400
    assert api.patch(f"/Patient?{criteria}", json={"active": False},
                     headers={"Content-Type": "application/merge-patch+json"}).status_code == 400
    assert matching(api, v) == [api.get(f"/Patient/{existing['id']}").json()]


# -- conditional update --------------------------------------------------------------------------------
def test_conditional_update_with_0_1_and_2_matches(api: FhirApi) -> None:
    v = tag()
    url = f"/Patient?identifier={SYSTEM}|{v}"
    created = api.put(url, json=patient(v, gender="female"), headers=FHIR)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    assert created.headers["Location"].endswith(f"/Patient/{rid}/_history/1")
    updated = api.put(url, json=patient(v, gender="male"), headers=FHIR)
    assert updated.status_code == 200 and updated.json()["id"] == rid
    assert updated.headers["ETag"] == 'W/"2"'
    assert api.get(f"/Patient/{rid}").json()["gender"] == "male"
    create(api, patient(v))
    assert api.put(url, json=patient(v, gender="other"), headers=FHIR).status_code == 412
    assert api.get(f"/Patient/{rid}").json()["gender"] == "male"


def test_conditional_update_id_rules(api: FhirApi) -> None:
    v = tag()
    url = f"/Patient?identifier={SYSTEM}|{v}"
    # no match, id in the body: update as create with that id
    rid = f"cu-{v}"
    r = api.put(url, json={**patient(v), "id": rid}, headers=FHIR)
    assert r.status_code == 201 and r.json()["id"] == rid
    # one match, the same id in the body: update
    assert api.put(url, json={**patient(v), "id": rid, "active": True}, headers=FHIR).status_code == 200
    # one match, another id in the body: 400, nothing changes
    r = api.put(url, json={**patient(v), "id": "someone-else"}, headers=FHIR)
    assert r.status_code == 400 and "someone-else" in r.text
    assert api.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "2"
    # no match, the body names an existing resource the criteria did not select: not overwritten
    other = create(api, patient(tag()))
    r = api.put(f"/Patient?identifier={SYSTEM}|{tag()}", json={**patient(v), "id": other["id"]}, headers=FHIR)
    assert r.status_code == 412
    assert api.get(f"/Patient/{other['id']}").json()["meta"]["versionId"] == "1"


def test_conditional_update_if_match(api: FhirApi) -> None:
    v = tag()
    url = f"/Patient?identifier={SYSTEM}|{v}"
    rid = create(api, patient(v))["id"]
    assert api.put(url, json=patient(v, active=True), headers={**FHIR, "If-Match": 'W/"5"'}).status_code == 412
    assert api.put(url, json=patient(v, active=True), headers={**FHIR, "If-Match": 'W/"1"'}).status_code == 200
    assert api.get(f"/Patient/{rid}").json()["active"] is True


# -- conditional delete --------------------------------------------------------------------------------
def test_conditional_delete_single_by_default(api: FhirApi) -> None:
    v = tag()
    url = f"/Patient?identifier={SYSTEM}|{v}"
    none = api.delete(url)
    assert none.status_code == 200 and "nothing was deleted" in none.text
    rid = create(api, patient(v))["id"]
    one = api.delete(url)
    assert one.status_code == 200 and f"Patient/{rid} deleted" in one.text
    assert api.get(f"/Patient/{rid}").status_code == 410
    a, b = create(api, patient(v)), create(api, patient(v))
    two = api.delete(url)
    assert two.status_code == 412
    assert {p["id"] for p in matching(api, v)} == {a["id"], b["id"]}


def test_conditional_delete_of_several_up_to_the_configured_cap(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", conditional_delete_max=2)
    with server.api() as api:
        v = tag()
        url = f"/Patient?identifier={SYSTEM}|{v}"
        ids = {create(api, patient(v))["id"] for _ in range(3)}
        assert api.delete(url).status_code == 412  # 3 > 2: nothing deleted
        assert len(matching(api, v)) == 3
        api.delete(f"/Patient/{ids.pop()}")
        r = api.delete(url)
        assert r.status_code == 200 and all(f"Patient/{i} deleted" in r.text for i in ids)
        assert matching(api, v) == []
        caps = {r["type"]: r["conditionalDelete"] for r in api.get("/metadata").json()["rest"][0]["resource"]}
        assert caps["Patient"] == "multiple"


# -- conditional read ----------------------------------------------------------------------------------
def test_if_none_match_and_if_modified_since_on_read_and_vread(api: FhirApi) -> None:
    p = create(api, patient(tag()))
    url = f"/Patient/{p['id']}"
    first = api.get(url)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    r = api.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["ETag"] == etag
    assert api.get(url, headers={"If-None-Match": 'W/"99"'}).status_code == 200
    assert api.get(url, headers={"If-None-Match": '"1"'}).status_code == 304  # weak comparison
    assert api.get(url, headers={"If-None-Match": "*"}).status_code == 304
    assert api.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    assert api.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert api.get(f"{url}/_history/1", headers={"If-None-Match": etag}).status_code == 304
    api.put(url, json={**p, "active": True}, headers=FHIR)
    assert api.get(url, headers={"If-None-Match": etag}).status_code == 200


# -- transactions --------------------------------------------------------------------------------------
def transaction(api: FhirApi, *entries: dict[str, Any]) -> Any:
    return api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": list(entries)},
                    headers=FHIR)


def observation(ref: str) -> dict[str, Any]:
    return {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                         "subject": {"reference": ref}},
            "request": {"method": "POST", "url": "Observation"}}


def test_conditional_references_in_a_transaction(api: FhirApi) -> None:
    v = tag()
    ref = f"Patient?identifier={SYSTEM}|{v}"
    none = transaction(api, observation(ref))
    assert none.status_code == 400 and "matches no Patient" in none.text
    rid = create(api, patient(v))["id"]
    one = transaction(api, observation(ref))
    assert one.status_code == 200, one.text
    assert one.json()["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{rid}"
    create(api, patient(v))
    two = transaction(api, observation(ref))
    assert two.status_code == 412
    found = api.get("/Observation", params={"subject": f"Patient/{rid}"}).json()
    assert found.get("total", len(found.get("entry", []))) == 1  # only the one from the successful transaction


def test_conditional_create_in_a_transaction_maps_its_full_url_to_the_match(api: FhirApi) -> None:
    v = tag()
    rid = create(api, patient(v))["id"]
    r = transaction(api,
                    {"fullUrl": "urn:uuid:6f1d0a9e-0000-4000-8000-000000000001", "resource": patient(v),
                     "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{v}"}},
                    observation("urn:uuid:6f1d0a9e-0000-4000-8000-000000000001"))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"].startswith("200")
    assert r.json()["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{rid}"


def test_conditional_put_patch_and_delete_entries(api: FhirApi) -> None:
    v1, v2, v3 = tag(), tag(), tag()
    keep = create(api, patient(v2, active=True))
    gone = create(api, patient(v3))
    json_patch = base64.b64encode(json.dumps([{"op": "replace", "path": "/active", "value": False}]).encode())
    r = transaction(
        api,
        {"fullUrl": "urn:uuid:6f1d0a9e-0000-4000-8000-000000000002", "resource": patient(v1, gender="female"),
         "request": {"method": "PUT", "url": f"Patient?identifier={SYSTEM}|{v1}"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": json_patch.decode()},
         "request": {"method": "PATCH", "url": f"Patient?identifier={SYSTEM}|{v2}"}},
        {"request": {"method": "DELETE", "url": f"Patient?identifier={SYSTEM}|{v3}"}},
        observation("urn:uuid:6f1d0a9e-0000-4000-8000-000000000002"))
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"].startswith("201")
    new_id = entries[0]["resource"]["id"]
    assert entries[1]["resource"]["id"] == keep["id"] and entries[1]["resource"]["active"] is False
    assert entries[2]["response"]["status"].startswith("204")
    assert entries[3]["resource"]["subject"]["reference"] == f"Patient/{new_id}"
    assert api.get(f"/Patient/{gone['id']}").status_code == 410


def test_patch_entries_fhirpath_and_failures_roll_back(api: FhirApi) -> None:
    p = create(api, patient(tag(), gender="female"))
    fhirpath = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"},
        {"name": "value", "valueCode": "male"}]}]}
    ok = transaction(api, {"resource": fhirpath, "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}})
    assert ok.status_code == 200, ok.text
    assert api.get(f"/Patient/{p['id']}").json()["gender"] == "male"
    failing = base64.b64encode(json.dumps([{"op": "test", "path": "/gender", "value": "female"}]).encode())
    bad = transaction(
        api,
        {"resource": patient(tag()), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": failing.decode()}, "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}})
    assert bad.status_code == 422
    assert api.get(f"/Patient/{p['id']}").json()["meta"]["versionId"] == "2"
    not_a_patch = transaction(api, {"resource": {"resourceType": "Patient"},
                                    "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}})
    assert not_a_patch.status_code == 400


def test_batch_patch_entry_and_conditional_reference(api: FhirApi) -> None:
    v = tag()
    p = create(api, patient(v))
    merge = base64.b64encode(json.dumps({"active": True}).encode())
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/merge-patch+json", "data": merge.decode()},
         "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}},
        observation(f"Patient?identifier={SYSTEM}|{v}"),
        observation(f"Patient?identifier={SYSTEM}|{tag()}"),
    ]}, headers=FHIR)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["resource"]["active"] is True
    assert entries[1]["resource"]["subject"]["reference"] == f"Patient/{p['id']}"
    assert entries[2]["response"]["status"] == "400 Bad Request"


def test_capability_statement_declares_patch_and_conditionals(api: FhirApi) -> None:
    from fhirclient.models.capabilitystatement import CapabilityStatement

    cs = CapabilityStatement(api.get("/metadata").json(), strict=True)
    patient = next(r for r in cs.rest[0].resource if r.type == "Patient")
    assert "patch" in {i.code for i in patient.interaction}
    assert patient.conditionalCreate is True and patient.conditionalUpdate is True
    assert (patient.conditionalDelete, patient.conditionalRead) == ("single", "full-support")
    assert patient.versioning == "versioned-update"  # If-Match / If-None-Match honoured on every write
    assert {"application/json-patch+json", "application/merge-patch+json", "application/fhir+json"} \
        <= set(cs.patchFormat)
    assert cs.format == ["application/fhir+json", "json"]


# -- empty and invalid If-None-Exist --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_if_none_exist_is_400_not_a_plain_create(api: FhirApi, value: str) -> None:
    v = tag()
    if not value:  # a header of white space only cannot be sent (HTTP trims it to the empty value)
        r = api.post("/Patient", json=patient(v), headers={**FHIR, "If-None-Exist": value})
        assert r.status_code == 400, r.text
        assert "If-None-Exist" in r.json()["issue"][0]["diagnostics"]
    entry = {"resource": patient(v), "request": {"method": "POST", "url": "Patient", "ifNoneExist": value}}
    assert transaction(api, entry).status_code == 400
    batch = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [entry]}, headers=FHIR)
    assert batch.json()["entry"][0]["response"]["status"] == "400 Bad Request"
    assert matching(api, v) == []


def test_invalid_if_none_exist_criteria_name_the_parameter(api: FhirApi) -> None:
    v = tag()
    r = api.post("/Patient", json=patient(v), headers={**FHIR, "If-None-Exist": "nmae=x"})
    assert r.status_code == 400
    message = r.json()["issue"][0]["diagnostics"]
    assert "If-None-Exist" in message and "nmae" in message
    r = api.post("/Patient", json=patient(v), headers={**FHIR, "If-None-Exist": "birthdate=notadate"})
    assert r.status_code == 400 and "birthdate" in r.json()["issue"][0]["diagnostics"]
    assert matching(api, v) == []


# -- references hidden in patch documents -------------------------------------------------------------
def test_references_inside_patch_documents_of_a_transaction_are_resolved(api: FhirApi) -> None:
    """urn:uuid fullUrls and conditional references inside a Binary-wrapped JSON Patch, a merge patch and
    a FHIRPath Patch's values are replaced like those of any resource (R4 http.html#trules)."""
    v = tag()
    named = create(api, patient(v))
    targets = [create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "t"}})
               for _ in range(4)]
    urn = "urn:uuid:6f1d0a9e-0000-4000-8000-0000000000aa"

    def wrapped(kind: str, doc: Any) -> dict[str, Any]:
        data = base64.b64encode(json.dumps(doc).encode()).decode()
        return {"resourceType": "Binary", "contentType": kind, "data": data}

    entries = [
        {"fullUrl": urn, "resource": patient(tag()), "request": {"method": "POST", "url": "Patient"}},
        {"resource": wrapped("application/json-patch+json",
                             [{"op": "add", "path": "/subject", "value": {"reference": urn}},
                              {"op": "add", "path": "/focus", "value": [{"reference": "x"}]},
                              {"op": "replace", "path": "/focus/0/reference",
                               "value": f"Patient?identifier={SYSTEM}|{v}"}]),
         "request": {"method": "PATCH", "url": f"Observation/{targets[0]['id']}"}},
        {"resource": wrapped("application/merge-patch+json",
                             {"subject": {"reference": f"Patient?identifier={SYSTEM}|{v}"}}),
         "request": {"method": "PATCH", "url": f"Observation/{targets[1]['id']}"}},
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"},
            {"name": "name", "valueString": "subject"}, {"name": "value", "valueReference": {"reference": urn}}]}]},
         "request": {"method": "PATCH", "url": f"Observation/{targets[2]['id']}"}},
        {"resource": {"resourceType": "Parameters", "parameter": [
            {"name": "operation", "part": [
                {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"},
                {"name": "name", "valueString": "subject"}, {"name": "value", "valueReference": {"reference": urn}}]},
            {"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Observation.subject.reference"},
                {"name": "value", "valueString": f"Patient?identifier={SYSTEM}|{v}"}]}]},
         "request": {"method": "PATCH", "url": f"Observation/{targets[3]['id']}"}},
    ]
    r = transaction(api, *entries)
    assert r.status_code == 200, r.text
    created = r.json()["entry"][0]["response"]["location"].split("/")[1]
    first = api.get(f"/Observation/{targets[0]['id']}").json()
    assert first["subject"]["reference"] == f"Patient/{created}"
    assert first["focus"][0]["reference"] == f"Patient/{named['id']}"
    assert api.get(f"/Observation/{targets[1]['id']}").json()["subject"]["reference"] == f"Patient/{named['id']}"
    assert api.get(f"/Observation/{targets[2]['id']}").json()["subject"]["reference"] == f"Patient/{created}"
    assert api.get(f"/Observation/{targets[3]['id']}").json()["subject"]["reference"] == f"Patient/{named['id']}"


def test_narrative_links_to_full_urls_are_resolved(api: FhirApi) -> None:
    urn = "urn:uuid:6f1d0a9e-0000-4000-8000-0000000000bb"
    div = f'<div xmlns="http://www.w3.org/1999/xhtml">See <a href="{urn}">the patient</a></div>'
    r = transaction(api, {"fullUrl": urn, "resource": patient(tag()), "request": {"method": "POST", "url": "Patient"}},
                    {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                                  "text": {"status": "generated", "div": div}},
                     "request": {"method": "POST", "url": "Observation"}})
    assert r.status_code == 200, r.text
    pid = r.json()["entry"][0]["resource"]["id"]
    assert f'href="Patient/{pid}"' in r.json()["entry"][1]["resource"]["text"]["div"]


def test_a_patch_in_a_binary_is_parsed_strictly(api: FhirApi) -> None:
    p = create(api, patient(tag()))
    for raw in (b'[{"op": "add", "path": "/active", "value": NaN}]', b'{"active": true, "active": false}'):
        entry = {"resource": {"resourceType": "Binary", "contentType": "application/merge-patch+json"
                              if raw.startswith(b"{") else "application/json-patch+json",
                              "data": base64.b64encode(raw).decode()},
                 "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}}
        r = transaction(api, entry)
        assert r.status_code == 400, r.text
        assert "data" in r.json()["issue"][0]["diagnostics"]
    assert api.get(f"/Patient/{p['id']}").json()["meta"]["versionId"] == "1"


# -- _format and _pretty inside entries ----------------------------------------------------------------
def test_format_in_an_entry_url_is_refused_unless_it_is_the_bundles_own(api: FhirApi) -> None:
    p = create(api, patient(tag()))
    for url, status in ((f"Patient/{p['id']}?_format=xml", "406"), (f"Patient/{p['id']}?_pretty=true", "400")):
        batch = api.post("", json={"resourceType": "Bundle", "type": "batch",
                                   "entry": [{"request": {"method": "GET", "url": url}}]}, headers=FHIR)
        assert batch.json()["entry"][0]["response"]["status"].split()[0] == status, batch.text
        assert transaction(api, {"request": {"method": "GET", "url": url}}).status_code == int(status)
    for url in (f"Patient/{p['id']}?_format=json", f"Patient?_id={p['id']}&_format=application/fhir%2Bjson"):
        ok = transaction(api, {"request": {"method": "GET", "url": url}})
        assert ok.status_code == 200 and ok.json()["entry"][0]["response"]["status"].startswith("200"), ok.text
    put = transaction(api, {"resource": p, "request": {"method": "PUT", "url": f"Patient/{p['id']}?_format=xml"}})
    assert put.status_code == 406
    assert api.get(f"/Patient/{p['id']}").json()["meta"]["versionId"] == "1"


def test_if_none_exist_may_start_with_the_type_or_a_question_mark(api: FhirApi) -> None:
    v = tag()
    first = api.post("/Patient", json=patient(v), headers={**FHIR, "If-None-Exist": f"Patient?identifier={SYSTEM}|{v}"})
    assert first.status_code == 201, first.text
    for criteria in (f"?identifier={SYSTEM}|{v}", f"Patient?identifier={SYSTEM}|{v}"):
        again = api.post("/Patient", json=patient(v), headers={**FHIR, "If-None-Exist": criteria})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = api.post("/Patient", json=patient(v), headers={**FHIR, "If-None-Exist": f"Observation?code={v}"})
    assert other.status_code == 400 and "Observation?code" in other.text
