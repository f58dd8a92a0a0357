"""Query parameters of reads, vreads and history over real HTTP (SQLite and PostgreSQL): `_summary` and
`_elements` honoured on every read path (Binary, Media, OperationDefinition included) or refused where
the answer is raw bytes; any other parameter refused with a 400 naming it unless the client asks for
lenient handling; the search's unknown parameters reported as R4 says."""

from __future__ import annotations

import base64

import pytest

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}
JSON = {"Accept": "application/fhir+json"}


def test_binary_json_read_honours_summary_and_elements(api: FhirApi) -> None:
    raw = b"x" * 70_000  # above the inline limit: the bytes live in the blob store
    r = api.post("/Binary", content=raw, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    full = api.get(f"/Binary/{bid}", headers=JSON).json()
    assert base64.b64decode(full["data"]) == raw
    for params in ({"_summary": "true"}, {"_elements": "contentType"}, {"_summary": "text"}):
        got = api.get(f"/Binary/{bid}", params=params, headers=JSON)
        assert got.status_code == 200, got.text
        body = got.json()
        assert "data" not in body and body["contentType"] == "application/pdf"
        assert any(t["code"] == "SUBSETTED" for t in body["meta"]["tag"])
        assert int(got.headers["content-length"]) < 2000  # the bytes were not streamed along
    with_data = api.get(f"/Binary/{bid}", params={"_elements": "data"}, headers=JSON).json()
    assert base64.b64decode(with_data["data"]) == raw
    assert set(with_data) == {"resourceType", "id", "meta", "contentType", "data"}
    assert with_data["contentType"] == "application/pdf"  # mandatory: always kept (R4 3.1.1.5.9)
    vread = api.get(f"/Binary/{bid}/_history/1", params={"_summary": "true", "_format": "json"}).json()
    assert "data" not in vread and vread["contentType"] == "application/pdf"
    small = api.post("/Binary", content=b"tiny", headers={"Content-Type": "text/plain"}).json()["id"]
    inline = api.get(f"/Binary/{small}", params={"_elements": "contentType"}, headers=JSON).json()
    assert "data" not in inline
    # the raw bytes have no elements: refused, not ignored
    r = api.get(f"/Binary/{bid}", params={"_summary": "true"})
    assert r.status_code == 400 and "_summary" in r.text and "raw content" in r.text
    assert api.get(f"/Binary/{bid}", params={"_summary": "count"}, headers=JSON).status_code == 400


def test_unknown_read_parameters_are_refused_unless_lenient(api: FhirApi) -> None:
    p = api.post("/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=FHIR).json()
    for path in (f"/Patient/{p['id']}", f"/Patient/{p['id']}/_history/1", f"/Patient/{p['id']}/_history",
                 "/Patient/_history", "/_history"):
        r = api.get(path, params={"foo": "1"})
        assert r.status_code == 400, (path, r.text)
        assert "'foo'" in r.text and r.json()["resourceType"] == "OperationOutcome"
        ok = api.get(path, params={"foo": "1"}, headers={"Prefer": "handling=lenient"})
        assert ok.status_code == 200, (path, ok.text)
    assert api.get(f"/Patient/{p['id']}", params=[("_summary", "true"), ("_summary", "false")]).status_code == 400
    assert api.get(f"/Patient/{p['id']}/_history", params={"_list": "x"}).status_code == 400
    binary = api.post("/Binary", content=b"abc", headers={"Content-Type": "text/plain"}).json()["id"]
    r = api.get(f"/Binary/{binary}", params={"download": "1"})
    assert r.status_code == 400 and "'download'" in r.text
    builtin = api.get("/OperationDefinition/binary-access-read", params={"_elements": "code"})
    assert builtin.status_code == 200
    assert "code" in builtin.json() and "parameter" not in builtin.json() and "description" not in builtin.json()
    assert api.get("/OperationDefinition/binary-access-read", params={"x": "1"}).status_code == 400


@pytest.mark.parametrize("handling, status", [(None, 200), ("lenient", 200), ("strict", 400)])
def test_unknown_search_parameters_follow_prefer_handling(api: FhirApi, handling: str | None, status: int) -> None:
    headers = {"Prefer": f"handling={handling}"} if handling else {}
    for path, params in (("/Patient", {"nonsense": "1"}), ("/", {"_type": "Patient", "nonsense": "1"}),
                         ("/Patient", {"_contained": "true"}), ("/Patient", {"general-practitioner.nonsense": "x"})):
        r = api.get(path, params=params, headers=headers)
        assert r.status_code == status, (path, params, r.text)
        if status == 200:
            outcome = [e for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
            name = next(k for k in params if k != "_type")
            assert outcome and name in outcome[0]["resource"]["issue"][0]["diagnostics"], r.text
            self_link = next(lk["url"] for lk in r.json()["link"] if lk["relation"] == "self")
            assert name not in self_link
        else:
            assert next(k for k in params if k != "_type") in r.text


def test_the_capabilities_interaction_honours_its_parameters(api: FhirApi) -> None:
    """`GET /metadata` takes `mode`, `_summary` and `_elements` (R4 http.html#capabilities); they were
    ignored, so `_elements=fhirVersion` answered the whole 750 KB statement and `mode=terminology` a
    CapabilityStatement for a TerminologyCapabilities."""
    whole = api.get("/metadata").json()
    assert api.get("/metadata", params={"mode": "full"}).json() == whole
    assert api.get("/metadata", params={"mode": "normative"}).json() == whole
    few = api.get("/metadata", params={"_elements": "fhirVersion"})
    assert few.status_code == 200, few.text
    body = few.json()
    assert body["fhirVersion"] == "4.0.1" and "rest" not in body and "software" not in body
    # the mandatory elements stay (R4 3.1.1.5.9), and the statement says it is not whole
    assert {"status", "date", "kind", "format"} <= set(body)
    assert any(t["code"] == "SUBSETTED" for t in body["meta"]["tag"])
    assert int(few.headers["content-length"]) < 2000
    text = api.get("/metadata", params={"_summary": "text"}).json()
    assert "rest" not in text and text["kind"] == "instance"
    summary = api.get("/metadata", params={"_summary": "true"}).json()
    # compressed for a client that accepts gzip, as the whole statement is
    zipped = api.get("/metadata", params={"_summary": "true"}, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.json() == summary
    assert int(zipped.headers["content-length"]) < 20_000
    plain = api.get("/metadata", params={"_summary": "true"}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json() == summary
    # rest is a summary element of CapabilityStatement; within it, a resource's searchParam and interaction
    # are not, and a summary drops them
    assert [r["type"] for r in summary["rest"][0]["resource"]] == [r["type"] for r in whole["rest"][0]["resource"]]
    assert not any("searchParam" in r or "interaction" in r for r in summary["rest"][0]["resource"])
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    for params, named in (({"mode": "terminology"}, "terminology"), ({"mode": "terse"}, "terse"),
                          ({"_summary": "count"}, "count"), ({"x": "1"}, "'x'")):
        r = api.get("/metadata", params=params)
        assert r.status_code == 400 and named in r.text, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    lenient = api.get("/metadata", params={"x": "1"}, headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200 and lenient.json() == whole


def test_summary_drops_elements_not_marked_summary_at_every_depth(api: FhirApi) -> None:
    """`_summary=true` keeps only elements marked summary (R4 3.1.1.5.8), below the top level too: an
    Observation component's `interpretation` and `referenceRange`, an Attachment's inline `data`. They were
    kept, so a summary of a DocumentReference carried its whole document."""
    obs = api.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"text": "bp"},
        "component": [{"code": {"text": "systolic"}, "valueQuantity": {"value": 120},
                       "interpretation": [{"text": "normal"}], "referenceRange": [{"text": "90-140"}],
                       "extension": [{"url": "http://example.org/fhir/StructureDefinition/x", "valueString": "y"}]}],
    }, headers=FHIR).json()
    doc = api.post("/DocumentReference", json={
        "resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"a note").decode(),
                                    "title": "note"}}],
    }, headers=FHIR).json()
    summary = api.get(f"/Observation/{obs['id']}", params={"_summary": "true"}).json()
    component = summary["component"][0]
    assert component["code"] == {"text": "systolic"} and component["valueQuantity"]["value"] == 120
    assert "interpretation" not in component and "referenceRange" not in component
    assert component["extension"] == obs["component"][0]["extension"]  # extensions stay
    found = api.get("/DocumentReference", params={"_id": doc["id"], "_summary": "true"}).json()
    attachment = found["entry"][0]["resource"]["content"][0]["attachment"]
    assert "data" not in attachment and attachment["title"] == "note" and attachment["size"] == 6
    # _summary=data and a plain read keep them
    assert api.get(f"/Observation/{obs['id']}", params={"_summary": "data"}).json()["component"][0][
        "interpretation"] == [{"text": "normal"}]
    assert "data" in api.get(f"/DocumentReference/{doc['id']}").json()["content"][0]["attachment"]


def test_summary_and_elements_keep_required_elements_and_match_names_exactly(api: FhirApi) -> None:
    """`status` is no choice element: `statusHistory` and `statusReason` are not it (they were kept by
    `_summary=true`, `_summary=text` and `_elements=status`); and `_summary=true` keeps required elements
    that are not summary (an Appointment's `participant`), so that the summary stays valid R4."""
    enc = api.post("/Encounter", json={
        "resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
        "statusHistory": [{"status": "planned", "period": {"start": "2020-01-01"}}],
        "classHistory": [{"class": {"code": "AMB"}, "period": {"start": "2020-01-01"}}]}, headers=FHIR).json()
    for params in ({"_summary": "true"}, {"_summary": "text"}, {"_elements": "status"}):
        got = api.get(f"/Encounter/{enc['id']}", params=params).json()
        assert "statusHistory" not in got and "classHistory" not in got, (params, got)
        assert got["status"] == "finished"
    appointment = api.post("/Appointment", json={
        "resourceType": "Appointment", "status": "booked", "comment": "bring the scans",
        "participant": [{"status": "accepted", "actor": {"display": "Dr. A"}}]}, headers=FHIR).json()
    summary = api.get(f"/Appointment/{appointment['id']}", params={"_summary": "true"}).json()
    assert summary["participant"] == appointment["participant"] and "comment" not in summary
    checked = api.post("/Appointment/$validate", json={k: v for k, v in summary.items() if k != "meta"},
                       headers=FHIR).json()
    assert not [i for i in checked["issue"] if i["severity"] in ("error", "fatal")], checked
    # a choice element named in _elements brings its form
    obs = api.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                                         "valueQuantity": {"value": 5}, "note": [{"text": "n"}]},
                   headers=FHIR).json()
    got = api.get(f"/Observation/{obs['id']}", params={"_elements": "value"}).json()
    assert got["valueQuantity"] == {"value": 5} and "note" not in got
