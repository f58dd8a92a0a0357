"""PATCH over real HTTP on SQLite and PostgreSQL: JSON Patch, FHIRPath Patch, JSON Merge Patch, If-Match."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def new_patient(api: FhirApi, **extra: Any) -> dict[str, Any]:
    body = {"resourceType": "Patient", "active": True, "gender": "female",
            "name": [{"family": "Patch", "given": ["Ann", "Beth"]}],
            "identifier": [{"system": "urn:test:a", "value": "1"}, {"system": "urn:test:b", "value": "2"}], **extra}
    r = api.post("/Patient", json=body, headers=FHIR)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def patch(api: FhirApi, rid: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return api.patch(f"/Patient/{rid}", json=body, headers=headers or JSON_PATCH)


def assert_unchanged(api: FhirApi, before: dict[str, Any]) -> None:
    now = api.get(f"/Patient/{before['id']}").json()
    assert now == before


# -- JSON Patch (RFC 6902) -----------------------------------------------------------------------------
@pytest.mark.parametrize(("ops", "check"), [
    ([{"op": "add", "path": "/birthDate", "value": "1990-02-03"}], lambda p: p["birthDate"] == "1990-02-03"),
    ([{"op": "add", "path": "/name/0/given/-", "value": "Cleo"}],
     lambda p: p["name"][0]["given"] == ["Ann", "Beth", "Cleo"]),
    ([{"op": "remove", "path": "/gender"}], lambda p: "gender" not in p),
    ([{"op": "replace", "path": "/active", "value": False}], lambda p: p["active"] is False),
    ([{"op": "move", "from": "/name/0/given/1", "path": "/name/0/given/0"}],
     lambda p: p["name"][0]["given"] == ["Beth", "Ann"]),
    ([{"op": "copy", "from": "/name/0/family", "path": "/name/0/given/-"}],
     lambda p: p["name"][0]["given"] == ["Ann", "Beth", "Patch"]),
    ([{"op": "test", "path": "/gender", "value": "female"}, {"op": "replace", "path": "/gender", "value": "male"}],
     lambda p: p["gender"] == "male"),
])
def test_json_patch_each_operation(api: FhirApi, ops: list[dict[str, Any]], check: Any) -> None:
    before = new_patient(api)
    r = patch(api, before["id"], ops)
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == 'W/"2"'
    assert r.headers["Location"].endswith(f"/Patient/{before['id']}/_history/2")
    assert "Last-Modified" in r.headers
    body = r.json()
    assert body["meta"]["versionId"] == "2" and check(body)
    assert check(api.get(f"/Patient/{before['id']}").json())
    history = api.get(f"/Patient/{before['id']}/_history").json()
    assert history["entry"][0]["request"]["method"] == "PATCH"


@pytest.mark.parametrize(("ops", "status"), [
    ([{"op": "test", "path": "/gender", "value": "male"}, {"op": "remove", "path": "/gender"}], 422),
    ([{"op": "remove", "path": "/deceasedBoolean"}], 422),
    ([{"op": "replace", "path": "/name/7/family", "value": "x"}], 422),
    ([{"op": "jump", "path": "/gender"}], 400),
    ({"op": "remove", "path": "/gender"}, 400),
    ([{"op": "replace", "path": "/id", "value": "another-id"}], 400),
    ([{"op": "replace", "path": "/resourceType", "value": "Observation"}], 400),
    ([{"op": "add", "path": "/meta", "value": "not an object"}], 400),  # the update path refuses the result
    ([{"op": "replace", "path": "/gender", "value": "xyz"}], 400),  # R4 validation of the patched resource
    ([{"op": "add", "path": "/birthDate", "value": "notadate"}], 400),
])
def test_json_patch_failures_change_nothing(api: FhirApi, ops: Any, status: int) -> None:
    before = new_patient(api)
    r = patch(api, before["id"], ops)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert_unchanged(api, before)


def test_patch_making_the_resource_invalid_names_the_element(api: FhirApi) -> None:
    before = new_patient(api)
    r = patch(api, before["id"], [{"op": "replace", "path": "/gender", "value": "xyz"}])
    assert r.status_code == 400
    assert any("Patient.gender" in i.get("expression", []) for i in r.json()["issue"]), r.text
    assert_unchanged(api, before)


def test_json_patch_if_match(api: FhirApi) -> None:
    before = new_patient(api)
    ops = [{"op": "replace", "path": "/active", "value": False}]
    stale = patch(api, before["id"], ops, {**JSON_PATCH, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert_unchanged(api, before)
    ok = patch(api, before["id"], ops, {**JSON_PATCH, "If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.json()["active"] is False
    again = patch(api, before["id"], ops, {**JSON_PATCH, "If-Match": 'W/"1"'})
    assert again.status_code == 412


def test_patch_missing_deleted_and_unsupported_body(api: FhirApi) -> None:
    ops = [{"op": "replace", "path": "/active", "value": False}]
    assert patch(api, "no-such-patient", ops).status_code == 404
    gone = new_patient(api)
    api.delete(f"/Patient/{gone['id']}")
    assert patch(api, gone["id"], ops).status_code == 410
    p = new_patient(api)
    r = api.patch(f"/Patient/{p['id']}", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415 and "json-patch+json" in r.text
    r = api.patch(f"/Patient/{p['id']}", content=b"active=false",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert_unchanged(api, p)


# -- JSON Merge Patch (RFC 7386) -----------------------------------------------------------------------
@pytest.mark.parametrize("ctype", ["application/merge-patch+json", "application/json", "application/fhir+json"])
def test_merge_patch(api: FhirApi, ctype: str) -> None:
    before = new_patient(api)
    r = patch(api, before["id"], {"gender": None, "birthDate": "2001-01-01", "name": [{"family": "Merged"}]},
              {"Content-Type": ctype})
    assert r.status_code == 200, r.text
    body = api.get(f"/Patient/{before['id']}").json()
    assert "gender" not in body and body["birthDate"] == "2001-01-01"
    assert body["name"] == [{"family": "Merged"}]  # arrays are replaced whole (RFC 7386)
    assert body["identifier"] == before["identifier"]


def test_merge_patch_cannot_change_id_or_type(api: FhirApi) -> None:
    before = new_patient(api)
    assert patch(api, before["id"], {"id": "other"}, {"Content-Type": "application/merge-patch+json"}).status_code \
        == 400
    assert patch(api, before["id"], {"resourceType": "Group"}, {"Content-Type": "application/merge-patch+json"}) \
        .status_code == 400
    assert patch(api, before["id"], "text", {"Content-Type": "application/merge-patch+json"}).status_code == 400
    assert_unchanged(api, before)


# -- FHIRPath Patch (R4 fhirpatch.html) ----------------------------------------------------------------
def operation(kind: str, path: str, **parts: Any) -> dict[str, Any]:
    out = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        out.append({"name": name, **value})
    return {"name": "operation", "part": out}


def parameters(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(ops)}


@pytest.mark.parametrize(("ops", "check"), [
    ([operation("add", "Patient", name={"valueString": "birthDate"}, value={"valueDate": "1970-05-06"})],
     lambda p: p["birthDate"] == "1970-05-06"),
    ([operation("add", "Patient", name={"valueString": "telecom"},
                value={"part": [{"name": "system", "valueCode": "phone"}, {"name": "value", "valueString": "555"}]})],
     lambda p: p["telecom"] == [{"system": "phone", "value": "555"}]),
    ([operation("add", "Patient.name[0]", name={"valueString": "given"}, value={"valueString": "Cleo"})],
     lambda p: p["name"][0]["given"] == ["Ann", "Beth", "Cleo"]),
    ([operation("insert", "Patient.identifier", index={"valueInteger": 0},
                value={"valueIdentifier": {"system": "urn:test:c", "value": "0"}})],
     lambda p: [i["value"] for i in p["identifier"]] == ["0", "1", "2"]),
    ([operation("delete", "Patient.identifier.where(system='urn:test:a')")],
     lambda p: [i["value"] for i in p["identifier"]] == ["2"]),
    ([operation("delete", "Patient.birthDate")], lambda p: "birthDate" not in p),  # no match: nothing to do
    ([operation("replace", "Patient.gender", value={"valueCode": "other"})], lambda p: p["gender"] == "other"),
    ([operation("replace", "Patient.identifier.where(system='urn:test:b').value", value={"valueString": "22"})],
     lambda p: p["identifier"][1]["value"] == "22"),
    ([operation("move", "Patient.identifier", source={"valueInteger": 1}, destination={"valueInteger": 0})],
     lambda p: [i["value"] for i in p["identifier"]] == ["2", "1"]),
    ([operation("delete", "Patient.name[0].given[0]"), operation("delete", "Patient.name[0].given[0]")],
     lambda p: "given" not in p["name"][0]),  # an emptied list is removed, not left as []
])
def test_fhirpath_patch_each_operation(api: FhirApi, ops: list[dict[str, Any]], check: Any) -> None:
    before = new_patient(api)
    r = patch(api, before["id"], parameters(*ops), FHIR)
    assert r.status_code == 200, r.text
    unchanged = {k: v for k, v in r.json().items() if k != "meta"} == {k: v for k, v in before.items() if k != "meta"}
    assert r.headers["ETag"] == ('W/"1"' if unchanged else 'W/"2"')  # a patch that changes nothing keeps the version
    assert check(r.json()) and check(api.get(f"/Patient/{before['id']}").json())


@pytest.mark.parametrize(("ops", "status"), [
    ([operation("replace", "Patient.birthDate", value={"valueDate": "2000-01-01"})], 422),  # nothing there
    ([operation("delete", "Patient.identifier")], 422),  # two elements
    ([operation("add", "Patient", name={"valueString": "gender"}, value={"valueCode": "male"})], 422),  # exists
    ([operation("insert", "Patient.identifier", index={"valueInteger": 5}, value={"valueIdentifier": {"value": "x"}})],
     422),
    ([operation("move", "Patient.identifier", source={"valueInteger": 0}, destination={"valueInteger": 9})], 422),
    ([operation("replace", "Patient.gender", value={"valueCode": "male"}),
      operation("replace", "Patient.nothing.here", value={"valueString": "x"})], 422),  # second fails: none kept
    ([operation("shuffle", "Patient.name")], 400),
    ([operation("replace", "Patient.name[", value={"valueString": "x"})], 400),
    ([{"name": "op"}], 400),
    ([operation("replace", "Patient.gender")], 400),  # no value
    ([operation("replace", "Patient.gender", value={"valueCode": "xyz"})], 400),  # result fails R4 validation
    ([operation("add", "Patient", name={"valueString": "nmae"}, value={"valueString": "x"})], 400),
])
def test_fhirpath_patch_failures_change_nothing(api: FhirApi, ops: list[dict[str, Any]], status: int) -> None:
    before = new_patient(api)
    r = patch(api, before["id"], parameters(*ops), FHIR)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert_unchanged(api, before)


def test_fhirpath_patch_if_match(api: FhirApi) -> None:
    before = new_patient(api)
    body = parameters(operation("replace", "Patient.active", value={"valueBoolean": False}))
    assert patch(api, before["id"], body, {**FHIR, "If-Match": 'W/"2"'}).status_code == 412
    assert_unchanged(api, before)
    assert patch(api, before["id"], body, {**FHIR, "If-Match": 'W/"1"'}).status_code == 200


def test_patch_result_goes_through_the_update_path(api: FhirApi) -> None:
    """Attachment rules apply to patched content as to an update: a Binary url is normalized."""
    made = api.post("/Binary", content=b"photo bytes",
                    headers={"Content-Type": "image/jpeg", "Prefer": "return=minimal"})
    binary = {"id": made.headers["Location"].split("/Binary/")[1].split("/")[0]}
    before = new_patient(api)
    r = patch(api, before["id"], [{"op": "add", "path": "/photo", "value": [
        {"contentType": "image/jpeg", "url": f"{api.base}/Binary/{binary['id']}"}]}])
    assert r.status_code == 200, r.text
    photo = r.json()["photo"][0]
    assert photo["size"] == len(b"photo bytes")  # filled in by the Attachment rules of the write path


def test_conditional_patch(api: FhirApi) -> None:
    tag = f"cp-{time.time_ns()}"
    ops = [{"op": "replace", "path": "/active", "value": False}]
    none = api.patch(f"/Patient?identifier=urn:test:cp|{tag}", json=ops, headers=JSON_PATCH)
    assert none.status_code == 404
    one = new_patient(api, identifier=[{"system": "urn:test:cp", "value": tag}])
    r = api.patch(f"/Patient?identifier=urn:test:cp|{tag}", json=ops, headers=JSON_PATCH)
    assert r.status_code == 200 and r.json()["id"] == one["id"] and r.json()["active"] is False
    two = new_patient(api, identifier=[{"system": "urn:test:cp", "value": tag}])
    r = api.patch(f"/Patient?identifier=urn:test:cp|{tag}", json=ops, headers=JSON_PATCH)
    assert r.status_code == 412
    assert_unchanged(api, two)
    assert api.patch("/Patient?nosuchparam=1", json=ops, headers=JSON_PATCH).status_code == 400
    assert api.patch("/Patient", json=ops, headers=JSON_PATCH).status_code == 400
