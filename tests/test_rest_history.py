"""History over real HTTP (SQLite and PostgreSQL): totals and pages computed in SQL with the access rules
inside the query (each version judged by its own content), `_total`, `_summary=count`, and paging that
stays put while versions are written between page requests."""

from __future__ import annotations

import uuid

import httpx

from tests.security_support import bearer, client_token
from tests.support.searching import FHIR, create
from tests.support.server import FhirApi, ServerProcess


def next_link(bundle: dict) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)


def versions(bundle: dict) -> list[tuple[str, str]]:
    return [(e["fullUrl"].rsplit("/", 1)[1], e["response"]["etag"]) for e in bundle.get("entry", [])]


def test_history_pages_stay_put_while_versions_are_written(api: FhirApi) -> None:
    p = create(api, {"resourceType": "Patient", "gender": "male"})
    for i in range(6):
        assert api.put(f"/Patient/{p['id']}", json={**p, "birthDate": f"200{i}-01-01"}, headers=FHIR).status_code == 200
    page = api.get(f"/Patient/{p['id']}/_history", params={"_count": 3}).json()
    assert page["total"] == 7
    seen = versions(page)
    while (nxt := next_link(page)) is not None:
        # newer versions arrive between page requests: they would push older ones onto the next page
        changed = {**p, "gender": "female", "birthDate": f"201{len(seen)}-01-01"}
        assert api.put(f"/Patient/{p['id']}", json=changed, headers=FHIR).status_code == 200
        page = httpx.get(nxt, headers=api.headers).json()
        seen += versions(page)
    assert [etag for _, etag in seen] == [f'W/"{v}"' for v in range(7, 0, -1)]
    # a fresh request sees them all
    assert api.get(f"/Patient/{p['id']}/_history").json()["total"] == 7 + 2  # two pages followed


def test_total_modes_and_summary_count(api: FhirApi) -> None:
    p = create(api, {"resourceType": "Patient"})
    api.put(f"/Patient/{p['id']}", json={**p, "active": True}, headers=FHIR)
    path = f"/Patient/{p['id']}/_history"
    assert api.get(path, params={"_total": "accurate"}).json()["total"] == 2
    none = api.get(path, params={"_total": "none", "_count": 1}).json()
    assert "total" not in none and len(none["entry"]) == 1 and next_link(none)  # a full page: maybe more
    last = api.get(path, params={"_total": "none", "_count": 1, "_offset": 1}).json()
    assert len(last["entry"]) == 1
    count = api.get(path, params={"_summary": "count"}).json()
    assert count["total"] == 2 and not count.get("entry")
    summary = api.get(path, params={"_elements": "active"}).json()
    assert any(t["code"] == "SUBSETTED" for t in summary["entry"][0]["resource"]["meta"]["tag"])
    assert api.get(path, params={"_total": "maybe"}).status_code == 400
    assert api.get(path, params={"_summary": "count", "_total": "none"}).status_code == 400
    assert api.get(path, params={"_until": "not-a-date"}).status_code == 400


def test_patient_context_history_is_filtered_in_the_query(server: ServerProcess, api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    mine = create(api, {"resourceType": "Patient"})
    theirs = create(api, {"resourceType": "Patient"})

    def obs(patient: dict) -> dict:
        return {"resourceType": "Observation", "status": "final", "code": {"text": t},
                "subject": {"reference": f"Patient/{patient['id']}"}}

    own = [create(api, obs(mine)) for _ in range(3)]
    for _ in range(5):
        create(api, obs(theirs))
    # one observation moved from the other patient to mine: its first version stays hidden
    moved = create(api, obs(theirs))
    assert api.put(f"/Observation/{moved['id']}", json={**obs(mine), "id": moved["id"]},
                   headers=FHIR).status_code == 200
    # and one moved away from mine: its first version stays visible, its second not
    away = create(api, obs(mine))
    assert api.put(f"/Observation/{away['id']}", json={**obs(theirs), "id": away["id"]},
                   headers=FHIR).status_code == 200
    # a deletion is judged by the version before it
    gone = create(api, obs(mine))
    assert api.delete(f"/Observation/{gone['id']}").status_code == 204
    create(api, {"resourceType": "Binary", "contentType": "text/plain", "data": "eA==",
                 "securityContext": {"reference": f"Patient/{theirs['id']}"}})
    own_binary = create(api, {"resourceType": "Binary", "contentType": "text/plain", "data": "eA==",
                              "securityContext": {"reference": f"Patient/{mine['id']}"}})
    expected = {(o["id"], 'W/"1"') for o in own} | {(moved["id"], 'W/"2"'), (away["id"], 'W/"1"'),
                                                     (gone["id"], 'W/"1"'), (gone["id"], 'W/"2"')}
    token = client_token(server, f"hist{t}", "patient/*.rs", f"Patient/{mine['id']}")
    with httpx.Client(base_url=server.base, headers=bearer(token), timeout=60) as client:
        page = client.get("/Observation/_history", params={"_count": 4, "_since": own[0]["meta"]["lastUpdated"]}).json()
        assert page["total"] == len(expected)
        seen = versions(page)
        assert len(seen) == 4  # a full page, though most rows in this range belong to the other patient
        while (nxt := next_link(page)) is not None:
            page = client.get(nxt).json()
            seen += versions(page)
        assert set(seen) == expected and len(seen) == len(expected)
        binaries = client.get("/Binary/_history", params={"_since": own[0]["meta"]["lastUpdated"]}).json()
        assert versions(binaries) == [(own_binary["id"], 'W/"1"')] and binaries["total"] == 1
        system = client.get("/_history", params={"_since": own[0]["meta"]["lastUpdated"]}).json()
        assert {v for v in versions(system)} == expected | {(own_binary["id"], 'W/"1"')}
        assert system["total"] == len(expected) + 1
        assert client.get(f"/Observation/{away['id']}/_history").status_code == 404  # not mine now
    scoped = client_token(server, f"histobs{t}", "system/Observation.rs")
    with httpx.Client(base_url=server.base, headers=bearer(scoped), timeout=60) as client:
        # the whole server's history holds only the types the client may read, in the total too
        since = {"_since": own[0]["meta"]["lastUpdated"], "_count": 100}
        system = client.get("/_history", params=since).json()
        types = {e["fullUrl"].split("/")[-2] for e in system["entry"]}
        assert types == {"Observation"}
        assert system["total"] == client.get("/Observation/_history", params=since).json()["total"] >= 10


def test_history_entries_say_how_each_version_was_answered(api: FhirApi) -> None:
    """A version a PUT created (update as create) is listed with 201, as it was answered; it was listed
    with 200. An update is 200, a deletion 204, a POST 201."""
    pid = uuid.uuid4().hex[:20]
    assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).status_code == 201
    assert api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True}).status_code == 200
    assert api.delete(f"/Patient/{pid}").status_code in (200, 204)
    history = api.get(f"/Patient/{pid}/_history").json()
    assert [(e["request"]["method"], e["response"]["status"]) for e in history["entry"]] == [
        ("DELETE", "204"), ("PUT", "200"), ("PUT", "201")]
    posted = api.post("/Patient", json={"resourceType": "Patient"}).json()
    assert api.get(f"/Patient/{posted['id']}/_history").json()["entry"][0]["response"]["status"] == "201"
