"""Search over real HTTP: _id, _lastUpdated, identifier, patient/subject, paging, _summary and _total."""

from __future__ import annotations

import uuid

from tests.support.server import FhirApi

FHIR = {"Content-Type": "application/fhir+json"}


def create(api: FhirApi, resource: dict) -> dict:
    r = api.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


def ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_search_by_id_and_bundle_shape(api: FhirApi) -> None:
    a, b = create(api, {"resourceType": "Patient"}), create(api, {"resourceType": "Patient"})
    r = api.get("/Patient", params={"_id": f"{a['id']},{b['id']}"})
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert sorted(ids(bundle)) == sorted([a["id"], b["id"]])
    for e in bundle["entry"]:
        assert e["fullUrl"].endswith(f"/Patient/{e['resource']['id']}") and e["search"]["mode"] == "match"


def test_identifier_token_search(api: FhirApi) -> None:
    value = uuid.uuid4().hex
    p1 = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:a", "value": value}]})
    p2 = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:b", "value": value}]})
    assert sorted(ids(api.get("/Patient", params={"identifier": value}).json())) == sorted([p1["id"], p2["id"]])
    assert ids(api.get("/Patient", params={"identifier": f"urn:a|{value}"}).json()) == [p1["id"]]
    assert ids(api.get("/Patient", params={"identifier": f"urn:c|{value}"}).json()) == []
    doc = create(api, {"resourceType": "DocumentReference", "status": "current",
                       "masterIdentifier": {"system": "urn:doc", "value": value},
                       "content": [{"attachment": {"contentType": "text/plain"}}]})
    assert ids(api.get("/DocumentReference", params={"identifier": f"urn:doc|{value}"}).json()) == [doc["id"]]


def test_patient_and_subject_reference_search(api: FhirApi) -> None:
    pat = create(api, {"resourceType": "Patient"})
    other = create(api, {"resourceType": "Patient"})
    ref = {"reference": f"Patient/{pat['id']}"}
    made = {
        "DocumentReference": create(api, {"resourceType": "DocumentReference", "status": "current", "subject": ref,
                                          "content": [{"attachment": {"contentType": "text/plain"}}]}),
        "Media": create(api, {"resourceType": "Media", "status": "completed", "subject": ref,
                              "content": {"contentType": "image/png"}}),
        "Communication": create(api, {"resourceType": "Communication", "status": "completed", "subject": ref}),
        "Observation": create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                    "subject": ref}),
        "DiagnosticReport": create(api, {"resourceType": "DiagnosticReport", "status": "final",
                                         "code": {"text": "x"}, "subject": ref}),
    }
    for rtype, res in made.items():
        for query in ({"patient": f"Patient/{pat['id']}"}, {"patient": pat["id"]},
                      {"subject": f"Patient/{pat['id']}"}, {"subject:Patient": pat["id"]},
                      {"subject": f"{api.base}/Patient/{pat['id']}"}):
            assert ids(api.get(f"/{rtype}", params=query).json()) == [res["id"]], (rtype, query)
        assert ids(api.get(f"/{rtype}", params={"patient": other["id"]}).json()) == []


def test_paging_with_next_and_previous_links(api: FhirApi) -> None:
    tag = uuid.uuid4().hex
    made = [create(api, {"resourceType": "Basic", "code": {"text": "x"},
                         "identifier": [{"system": "urn:page", "value": tag}]})["id"] for _ in range(5)]
    first = api.get("/Basic", params={"identifier": f"urn:page|{tag}", "_count": 2, "_total": "accurate"}).json()
    assert first["total"] == 5 and len(ids(first)) == 2
    seen = ids(first)
    page = first
    while True:
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        page = api.get(nxt[0]).json()
        seen += ids(page)
    assert sorted(seen) == sorted(made) and len(seen) == 5
    prev = [link["url"] for link in page["link"] if link["relation"] == "previous"]
    assert prev and len(ids(api.get(prev[0]).json())) == 2


def test_sort_summary_count_and_last_updated(api: FhirApi) -> None:
    tag = uuid.uuid4().hex
    made = [create(api, {"resourceType": "Basic", "code": {"text": "x"},
                         "identifier": [{"system": "urn:sort", "value": tag}]}) for _ in range(3)]
    q = {"identifier": f"urn:sort|{tag}"}
    asc = ids(api.get("/Basic", params={**q, "_sort": "_lastUpdated"}).json())
    desc = ids(api.get("/Basic", params={**q, "_sort": "-_lastUpdated"}).json())
    assert asc == [m["id"] for m in made] and desc == list(reversed(asc))
    count = api.get("/Basic", params={**q, "_summary": "count"}).json()
    assert count["total"] == 3 and "entry" not in count
    middle = made[1]["meta"]["lastUpdated"]
    assert ids(api.get("/Basic", params={**q, "_lastUpdated": f"gt{middle}"}).json()) == [made[2]["id"]]
    assert ids(api.get("/Basic", params={**q, "_lastUpdated": f"lt{middle}"}).json()) == [made[0]["id"]]
    assert ids(api.get("/Basic", params={**q, "_lastUpdated": f"ge{middle}", "_sort": "_lastUpdated"}).json()) \
        == [made[1]["id"], made[2]["id"]]
    assert ids(api.get("/Basic", params={**q, "_lastUpdated": middle}).json()) == [made[1]["id"]]
    assert ids(api.get("/Basic", params={**q, "_lastUpdated": "le2000-01-01"}).json()) == []


def test_post_search(api: FhirApi) -> None:
    pat = create(api, {"resourceType": "Patient"})
    r = api.post("/Patient/_search", data={"_id": pat["id"]})
    assert r.status_code == 200 and ids(r.json()) == [pat["id"]]


def test_deleted_resources_are_not_found_by_search(api: FhirApi) -> None:
    pat = create(api, {"resourceType": "Patient"})
    api.delete(f"/Patient/{pat['id']}")
    assert ids(api.get("/Patient", params={"_id": pat["id"]}).json()) == []
