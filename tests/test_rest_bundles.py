"""Batch and transaction Bundles at the FHIR base."""

from __future__ import annotations

import uuid

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}


def test_transaction_rewrites_links_only_where_r4_puts_them(api: FhirApi) -> None:
    """Every string equal to a fullUrl or a conditional reference was rewritten: an Identifier.value, a
    valueString, a note, and the entries of a stored document Bundle. R4 http.html#trules rewrites references,
    uri/url/oid/uuid elements and the narrative's links; strings are data, and a stored Bundle is kept whole."""
    urn = f"urn:uuid:{uuid.uuid4()}"
    mrn = f"mrn-{uuid.uuid4().hex[:8]}"
    existing = api.post("/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": "urn:mrn", "value": f"{mrn}-old"}]}, headers=FHIR).json()["id"]
    conditional = f"Patient?identifier=urn:mrn|{mrn}-old"
    document = {"resourceType": "Bundle", "type": "document", "identifier": {"system": "urn:doc", "value": mrn},
                "timestamp": "2025-01-01T00:00:00Z", "entry": [
                    {"fullUrl": "urn:uuid:0d1b7c26-8a83-4a8e-9a59-3f0f5c0b7a11",
                     "resource": {"resourceType": "Composition", "status": "final", "type": {"text": "note"},
                                  "date": "2025-01-01", "title": "t", "author": [{"reference": urn}],
                                  "subject": {"reference": urn}}},
                    {"fullUrl": urn, "resource": {"resourceType": "Patient"}}]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": urn, "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": urn},
                      "identifier": [{"system": "urn:ietf:rfc:3986", "value": urn}],
                      "subject": {"reference": urn}, "valueString": conditional, "note": [{"text": urn}],
                      "extension": [{"url": "http://example.org/link", "valueUri": urn},
                                    {"url": "http://example.org/same", "valueUuid": urn}],
                      "text": {"status": "generated",
                               "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{urn}">p</a></div>'}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "c"},
                      "subject": {"reference": conditional}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": document, "request": {"method": "POST", "url": "Bundle"}},
    ]}
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    locations = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]
    patient = locations[0]
    obs = api.get(f"/{locations[1]}").json()
    assert obs["subject"]["reference"] == patient and obs["extension"][0]["valueUri"] == patient
    assert obs["extension"][1]["valueUuid"] == urn  # a uuid element stays a uuid
    assert f'href="{patient}"' in obs["text"]["div"]
    assert obs["identifier"][0]["value"] == urn and obs["note"][0]["text"] == urn and obs["code"]["text"] == urn
    assert obs["valueString"] == conditional
    assert api.get(f"/{locations[2]}").json()["subject"]["reference"] == f"Patient/{existing}"
    stored = api.get(f"/{locations[3]}").json()
    assert stored["entry"] == document["entry"]


def test_placeholders_that_name_no_entry_are_refused(api: FhirApi) -> None:
    """A `urn:uuid:` reference naming no entry of a transaction was stored as it was (pointing nowhere once
    the Bundle is gone), and so was a batch entry's reference to another entry's fullUrl, which a batch
    cannot resolve: each is now that entry's 400, and a transaction writes nothing."""
    tag = uuid.uuid4().hex
    dangling = f"urn:uuid:{uuid.uuid4()}"

    def obs(subject: str) -> dict:
        return {"resourceType": "Observation", "status": "final", "code": {"text": tag},
                "subject": {"reference": subject}}

    r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": tag}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": obs(dangling), "request": {"method": "POST", "url": "Observation"}}]}, headers=FHIR)
    assert r.status_code == 400 and dangling in r.text and "Bundle.entry[1]" in r.text, r.text
    assert api.get("/Observation", params={"code:text": tag, "_summary": "count"}).json()["total"] == 0
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    batch = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": patient_urn, "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": obs(patient_urn), "request": {"method": "POST", "url": "Observation"}}]}, headers=FHIR).json()
    assert [e["response"]["status"][:3] for e in batch["entry"]] == ["201", "400"], batch
    assert patient_urn in str(batch["entry"][1]["response"]["outcome"])


def test_transaction_resolves_urn_uuid_references(api: FhirApi) -> None:
    pat_urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                          "subject": {"reference": pat_urn},
                          "note": [{"text": "see also"}], "focus": [{"reference": pat_urn}]},
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": pat_urn, "resource": {"resourceType": "Patient", "active": True},
             "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    obs_entry, pat_entry = out["entry"]
    assert obs_entry["response"]["status"].startswith("201")
    assert obs_entry["response"]["location"].startswith("Observation/")
    assert obs_entry["response"]["etag"] == 'W/"1"'
    pat_id = pat_entry["response"]["location"].split("/")[1]
    obs_id = obs_entry["response"]["location"].split("/")[1]
    obs = api.get(f"/Observation/{obs_id}").json()
    assert obs["subject"]["reference"] == f"Patient/{pat_id}"
    assert obs["focus"][0]["reference"] == f"Patient/{pat_id}"
    assert api.get("/Observation", params={"patient": pat_id}).json()["entry"][0]["resource"]["id"] == obs_id


def test_transaction_is_all_or_nothing(api: FhirApi) -> None:
    marker = uuid.uuid4().hex
    existing = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()
    other = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:tx", "value": marker}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": existing["id"], "active": True},
             "request": {"method": "PUT", "url": f"Patient/{existing['id']}"}},
            {"resource": {"resourceType": "Patient", "id": other["id"]},
             "request": {"method": "PUT", "url": f"Patient/{other['id']}", "ifMatch": 'W/"7"'}},
        ],
    }
    r = api.post("", json=bundle, headers=FHIR)
    assert r.status_code == 412
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "entry" not in api.get("/Patient", params={"identifier": f"urn:tx|{marker}"}).json()
    assert api.get(f"/Patient/{existing['id']}").json()["meta"]["versionId"] == "1"


def test_transaction_acting_twice_on_one_resource_fails(api: FhirApi) -> None:
    """R4 http.html#trules: identities that overlap, conditional ones resolved, fail the transaction (400,
    nothing written); it used to apply both entries in turn. A batch has no such rule."""
    pid = api.post("/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": "urn:overlap", "value": uuid.uuid4().hex}]}, headers=FHIR).json()
    criteria = f"Patient?identifier=urn:overlap|{pid['identifier'][0]['value']}"
    put = {"resource": {"resourceType": "Patient", "id": pid["id"], "active": True},
           "request": {"method": "PUT", "url": f"Patient/{pid['id']}"}}
    for second in [put, {"request": {"method": "DELETE", "url": f"Patient/{pid['id']}"}},
                   {"request": {"method": "DELETE", "url": criteria}},
                   {"resource": {"resourceType": "Patient", "active": False},
                    "request": {"method": "PUT", "url": criteria}}]:
        r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [put, second]}, headers=FHIR)
        assert r.status_code == 400 and "Bundle.entry[1]" in r.json()["issue"][0]["expression"], r.text
    assert api.get(f"/Patient/{pid['id']}").json()["meta"]["versionId"] == "1"
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [put, put]}, headers=FHIR)
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "200"]


def test_batch_entries_succeed_or_fail_independently(api: FhirApi) -> None:
    pat = api.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()
    bundle = {
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Spaceship"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": f"Patient/{pat['id']}"}},
            {"request": {"method": "GET", "url": "Patient/nope-nope"}},
            {"request": {"method": "DELETE", "url": f"Patient/{pat['id']}"}},
            {"request": {"method": "GET", "url": f"Patient?_id={pat['id']}"}},
        ],
    }
    out = api.post("", json=bundle, headers=FHIR).json()
    statuses = [e["response"]["status"].split()[0] for e in out["entry"]]
    assert out["type"] == "batch-response"
    assert statuses == ["201", "400", "200", "404", "204", "200"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert out["entry"][2]["resource"]["id"] == pat["id"]


def test_bundle_type_must_be_batch_or_transaction(api: FhirApi) -> None:
    r = api.post("", json={"resourceType": "Bundle", "type": "collection"}, headers=FHIR)
    assert r.status_code == 400 and "batch or transaction" in r.json()["issue"][0]["diagnostics"]


def test_metadata_parses_with_strict_r4_models(api: FhirApi) -> None:
    from fhirclient.models.capabilitystatement import CapabilityStatement

    body = api.get("/metadata").json()
    cs = CapabilityStatement(body, strict=True)
    assert cs.fhirVersion == "4.0.1"
    types = {r.type for r in cs.rest[0].resource}
    assert {"Patient", "Binary", "DocumentReference", "Media"} <= types


def test_transaction_fails_with_a_failing_read_entry(api: FhirApi) -> None:
    """R4 http.html#transaction: all actions succeed or none; a GET entry that fails (400, 404) used to
    leave the other entries committed with a 200 transaction-response. A batch keeps per-entry statuses."""
    marker = uuid.uuid4().hex
    post = {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:txf", "value": marker}]},
            "request": {"method": "POST", "url": "Patient"}}
    for failing, status in (({"request": {"method": "GET", "url": "Patient?active=yes"}}, 400),
                            ({"request": {"method": "GET", "url": "Patient/doesnotexist"}}, 404)):
        r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [post, failing]},
                     headers=FHIR)
        assert r.status_code == status, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    assert "entry" not in api.get("/Patient", params={"identifier": f"urn:txf|{marker}"}).json()
    # reads that succeed see the transaction's own writes
    ok = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {**post, "fullUrl": f"urn:uuid:{uuid.uuid4()}"},
        {"request": {"method": "GET", "url": f"Patient?identifier=urn:txf|{marker}"}}]}, headers=FHIR)
    assert ok.status_code == 200, ok.text
    assert ok.json()["entry"][1]["resource"]["total"] == 1
    batch = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?active=yes"}},
        {"request": {"method": "GET", "url": "Patient/doesnotexist"}}]}, headers=FHIR)
    assert [e["response"]["status"][:3] for e in batch.json()["entry"]] == ["400", "404"]


def test_transaction_conditional_creates_with_the_same_criteria_create_once(api: FhirApi) -> None:
    """Two `POST Patient` entries with the same ifNoneExist used to create two Patients; the second now
    resolves to the first's (200 OK, its location, its fullUrl mapped there)."""
    marker = uuid.uuid4().hex
    urns = [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
    entries = [{"fullUrl": urn, "resource": {"resourceType": "Patient",
                                             "identifier": [{"system": "urn:dup", "value": marker}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}}
               for urn, criteria in zip(urns, [f"identifier=urn:dup|{marker}",
                                                f"Patient?identifier=urn:dup|{marker}"], strict=True)]
    entries.append({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                 "subject": {"reference": urns[1]}},
                    "request": {"method": "POST", "url": "Observation"}})
    r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, headers=FHIR)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert [e["response"]["status"] for e in out] == ["201 Created", "200 OK", "201 Created"]
    assert out[0]["response"]["location"] == out[1]["response"]["location"]
    found = api.get("/Patient", params={"identifier": f"urn:dup|{marker}"}).json()
    assert len(found["entry"]) == 1
    pid = found["entry"][0]["resource"]["id"]
    assert out[2]["resource"]["subject"]["reference"] == f"Patient/{pid}"


def test_transaction_conditional_create_matching_another_entry_fails(api: FhirApi) -> None:
    """An ifNoneExist that would match what another entry of the same transaction creates (other criteria
    text, or a plain create): 400 naming both entries, nothing written."""
    marker = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "active": True, "identifier": [{"system": "urn:dup2", "value": marker}]}
    for first_request in ({"method": "POST", "url": "Patient"},
                          {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:dup2|{marker}"}):
        r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient, "request": first_request},
            {"resource": patient, "request": {"method": "POST", "url": "Patient",
                                              "ifNoneExist": f"identifier=urn:dup2|{marker}&active=true"}}]},
            headers=FHIR)
        assert r.status_code == 400, r.text
        text = r.json()["issue"][0]["diagnostics"]
        assert "Bundle.entry[0]" in text and "Bundle.entry[1]" in text, text
    assert "entry" not in api.get("/Patient", params={"identifier": f"urn:dup2|{marker}"}).json()


def test_duplicate_or_malformed_full_urls_are_refused(api: FhirApi) -> None:
    """R4 bdl-7: fullUrl is unique in a Bundle; two POSTs with one fullUrl used to both be created, and
    references silently went to the second. A urn:uuid: that is not a UUID is refused too."""
    marker = uuid.uuid4().hex
    entry = {"fullUrl": "urn:uuid:6f7a1a30-0000-0000-0000-000000000001",
             "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:fu", "value": marker}]},
             "request": {"method": "POST", "url": "Patient"}}
    for kind in ("transaction", "batch"):
        r = api.post("", json={"resourceType": "Bundle", "type": kind, "entry": [entry, entry]}, headers=FHIR)
        assert r.status_code == 400, r.text
        assert "urn:uuid:6f7a1a30-0000-0000-0000-000000000001" in r.json()["issue"][0]["diagnostics"]
        r = api.post("", json={"resourceType": "Bundle", "type": kind,
                               "entry": [{**entry, "fullUrl": "urn:uuid:1"}]}, headers=FHIR)
        assert r.status_code == 400 and "urn:uuid:1" in r.json()["issue"][0]["diagnostics"], r.text
    assert "entry" not in api.get("/Patient", params={"identifier": f"urn:fu|{marker}"}).json()


def test_batch_reads_history_and_refuses_urls_it_cannot_answer(api: FhirApi) -> None:
    """GET `Type/id/_history` in a batch was answered as a read of `Type/id` (the resource, not its
    history), `Type/id/anything` likewise, and `Type/_history` was a 404; a history entry now holds the
    history Bundle, with history's parameters, and any other shape is that entry's 400."""
    pid = uuid.uuid4().hex[:20]
    assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=FHIR).status_code == 201
    assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True},
                   headers=FHIR).status_code == 200
    entries = [{"request": {"method": "GET", "url": url}} for url in (
        f"Patient/{pid}/_history", "Patient/_history?_count=1", f"Patient/{pid}/_history?_summary=count",
        f"Patient/{pid}/everything", f"Patient/{pid}/_history?name=x", f"Patient/{pid}/_history/1")]
    entries.append({"request": {"method": "PUT", "url": f"Patient/{pid}/_history"},
                    "resource": {"resourceType": "Patient", "id": pid}})
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=FHIR)
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    statuses = [e["response"]["status"].split()[0] for e in got]
    assert statuses == ["200", "200", "200", "400", "400", "200", "400"], statuses
    instance = got[0]["resource"]
    assert instance["type"] == "history" and instance["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in instance["entry"]] == ["2", "1"]
    assert got[1]["resource"]["type"] == "history" and len(got[1]["resource"]["entry"]) == 1
    assert got[2]["resource"]["total"] == 2 and "entry" not in got[2]["resource"]
    assert "name" in got[4]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert got[5]["resource"]["meta"]["versionId"] == "1"
    # a transaction's reads see its writes; history has its own snapshot, so it is refused there
    t = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{pid}/_history"}}]}, headers=FHIR)
    assert t.status_code == 400 and "batch" in t.text


def test_batch_reads_take_summary_and_elements_and_refuse_other_parameters(api: FhirApi) -> None:
    """A read or vread entry answered the whole resource whatever its query held: `_summary=true` left a
    DocumentReference's inline data in, `bogus=1` was ignored. They now act as on a read outside a Bundle."""
    doc = api.post("/DocumentReference", json={
        "resourceType": "DocumentReference", "status": "current", "description": "scan",
        "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8="}}]}, headers=FHIR).json()
    did = doc["id"]
    urls = [f"DocumentReference/{did}?_summary=true", f"DocumentReference/{did}/_history/1?_elements=status",
            f"DocumentReference/{did}?bogus=1", f"DocumentReference/{did}?_summary=true&_summary=data",
            f"DocumentReference/{did}?_summary=count", "DocumentReference//_history", f"DocumentReference/{did}"]
    r = api.post("", json={"resourceType": "Bundle", "type": "batch",
                           "entry": [{"request": {"method": "GET", "url": u}} for u in urls]}, headers=FHIR)
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    assert [e["response"]["status"].split()[0] for e in got] == ["200", "200", "400", "400", "400", "400", "200"]
    summary = got[0]["resource"]
    assert "data" not in summary["content"][0]["attachment"] and "description" in summary
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    assert set(got[1]["resource"]) == {"resourceType", "id", "meta", "status", "content"}
    assert "bogus" in got[2]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert got[6]["resource"]["content"][0]["attachment"]["data"] == "aGVsbG8="
    # in a transaction too
    t = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"DocumentReference/{did}?_summary=true"}}]}, headers=FHIR)
    assert t.status_code == 200 and "data" not in t.json()["entry"][0]["resource"]["content"][0]["attachment"]


def test_batch_entry_paths_are_decoded_and_head_entries_have_no_body(api: FhirApi) -> None:
    """`Patient/{id}/_history/%31` is version 1, as outside a Bundle (it was a 404); a HEAD entry answers
    without the resource, as a HEAD has no body (it carried the whole resource); an ifModifiedSince that is
    no instant is a 400 (it was ignored)."""
    pid = uuid.uuid4().hex[:20]
    assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=FHIR).status_code == 201
    escaped = "".join(f"%{ord(c):02X}" for c in pid[:3]) + pid[3:]
    entries = [{"request": {"method": "GET", "url": f"Patient/{pid}/_history/%31"}},
               {"request": {"method": "GET", "url": f"Patient/{escaped}"}},
               {"request": {"method": "HEAD", "url": f"Patient/{pid}"}},
               {"request": {"method": "HEAD", "url": f"Patient?_id={pid}"}},
               {"request": {"method": "GET", "url": f"Patient/{pid}", "ifModifiedSince": "garbage"}}]
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=FHIR)
    got = r.json()["entry"]
    assert [e["response"]["status"].split()[0] for e in got] == ["200", "200", "200", "200", "400"], got
    assert got[0]["resource"]["id"] == pid and got[1]["resource"]["id"] == pid
    assert "resource" not in got[2] and "resource" not in got[3]
    assert got[2]["response"]["etag"] == 'W/"1"'


def test_prefer_return_applies_to_each_write_entry(api: FhirApi) -> None:
    """`Prefer: return=minimal` leaves each write entry's resource out, `return=OperationOutcome` puts an
    OperationOutcome in `response.outcome` instead (R4 http.html#prefer); every entry carried its resource."""
    def bundle(kind: str) -> dict[str, object]:
        return {"resourceType": "Bundle", "type": kind, "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Patient", "active": True},
             "request": {"method": "POST", "url": "Patient"}}]}
    for kind in ("batch", "transaction"):
        minimal = api.post("", json=bundle(kind), headers={**FHIR, "Prefer": "return=minimal"}).json()
        entry = minimal["entry"][0]
        assert "resource" not in entry and entry["response"]["status"].startswith("201"), entry
        assert entry["response"]["location"].startswith("Patient/")
        outcome = api.post("", json=bundle(kind), headers={**FHIR, "Prefer": "return=OperationOutcome"}).json()
        entry = outcome["entry"][0]
        assert "resource" not in entry and entry["response"]["outcome"]["resourceType"] == "OperationOutcome"
        full = api.post("", json=bundle(kind), headers=FHIR).json()
        assert full["entry"][0]["resource"]["resourceType"] == "Patient"


def test_request_methods_are_r4_http_verb_codes(api: FhirApi) -> None:
    """`post` is no HTTPVerb code (R4's are upper case): it was taken as POST; now the transaction is 400
    naming the entry's method, and nothing is written."""
    tag = uuid.uuid4().hex
    r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": tag}]}, "request": {"method": "post",
                                                                                     "url": "Patient"}}]},
        headers=FHIR)
    assert r.status_code == 400 and "'post'" in r.text and "request.method" in r.text, r.text
    assert api.get("/Patient", params={"family": tag, "_summary": "count"}).json()["total"] == 0



def test_a_write_entry_names_its_resource_by_id_or_by_criteria_not_both(api: FhirApi) -> None:
    """`PUT Patient/x?foo=bar` in a batch was applied with its query dropped."""
    rid = f"both-{uuid.uuid4().hex[:8]}"
    out = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": rid},
         "request": {"method": "PUT", "url": f"Patient/{rid}?foo=bar"}},
        {"request": {"method": "DELETE", "url": f"Patient/{rid}?active=true"}}]}, headers=FHIR).json()
    assert [e["response"]["status"][:3] for e in out["entry"]] == ["400", "400"], out
    assert api.get(f"/Patient/{rid}").status_code == 404
