"""Search result parameters over real HTTP: _sort, paging under concurrent inserts, _total, _summary,
_elements, _include/_revinclude, compartment search, Patient/$everything, access-filtered pages."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx

from tests.security_support import bearer, client_token
from tests.support.server import FhirApi, ServerProcess

FHIR = {"Content-Type": "application/fhir+json"}


def create(api: FhirApi | httpx.Client, resource: dict) -> dict:
    r = api.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


def entries(bundle: dict, mode: str = "match") -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def link(bundle: dict, relation: str) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == relation), None)


def tag() -> str:
    return uuid.uuid4().hex[:12]


def test_sort_by_several_keys_with_descending_and_id_ties(api: FhirApi) -> None:
    t = tag()
    made = []
    for family, birth in (("b", "1990-01-01"), ("a", "1980-01-01"), ("b", "1970-01-01"), ("c", None), ("a", None)):
        p = {"resourceType": "Patient", "identifier": [{"system": "urn:sort", "value": t}],
             "name": [{"family": f"{family}{t}"}]}
        if birth:
            p["birthDate"] = birth
        made.append(create(api, p))
    q = {"identifier": f"urn:sort|{t}"}
    got = [p["id"] for p in entries(api.get("/Patient", params={**q, "_sort": "family,-birthdate"}).json())]
    expected = [made[1], made[4], made[0], made[2], made[3]]  # a(1980), a(none last), b(1990), b(1970), c
    assert got == [p["id"] for p in expected]
    by_birth = [p["id"] for p in entries(api.get("/Patient", params={**q, "_sort": "birthdate"}).json())]
    assert by_birth[:3] == [made[2]["id"], made[1]["id"], made[0]["id"]]  # then the two without, by id
    assert by_birth[3:] == sorted([made[3]["id"], made[4]["id"]])
    by_id = [p["id"] for p in entries(api.get("/Patient", params={**q, "_sort": "-_id"}).json())]
    assert by_id == sorted((m["id"] for m in made), reverse=True)


def test_paging_stays_correct_while_resources_are_created(api: FhirApi) -> None:
    t = tag()
    made = {create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:page", "value": t}],
                         "name": [{"family": f"m{i}{t}"}]})["id"] for i in range(7)}
    q = {"identifier": f"urn:page|{t}", "_sort": "family", "_count": 3}
    page = api.get("/Patient", params=q).json()
    seen = [p["id"] for p in entries(page)]
    # new resources that sort before everything on the next pages, created between page requests
    for i in range(3):
        create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:page", "value": t}],
                     "name": [{"family": f"a{i}{t}"}]})
    while (nxt := link(page, "next")) is not None:
        page = api.get(nxt).json()
        seen += [p["id"] for p in entries(page)]
    assert len(seen) == len(set(seen)) == 7 and set(seen) == made


def test_paging_skips_nothing_when_a_returned_resource_is_updated(api: FhirApi) -> None:
    """An update between page requests to a resource already returned must not shift the later pages:
    every resource left unchanged is returned exactly once, with the default order and with `_sort`."""
    t = tag()
    made = []
    for i in range(8):  # the last three without a birth date: sorted last, across a page boundary
        patient = {"resourceType": "Patient", "identifier": [{"system": "urn:upd", "value": t}]}
        if i < 5:
            patient["birthDate"] = f"19{50 + i}-01-01"
        made.append(create(api, patient))
    for sort in ({}, {"_sort": "birthdate"}, {"_sort": "-birthdate,gender"}):
        page = api.get("/Patient", params={"identifier": f"urn:upd|{t}", "_count": 3, **sort}).json()
        first = entries(page)
        changed = first[0]
        changed["gender"] = "male" if changed.get("gender") != "male" else "female"
        assert api.put(f"/Patient/{changed['id']}", json=changed, headers=FHIR).status_code == 200
        seen = [p["id"] for p in first]
        while (nxt := link(page, "next")) is not None:
            page = api.get(nxt).json()
            seen += [p["id"] for p in entries(page)]
        unchanged = {m["id"] for m in made} - {changed["id"]}
        assert len(seen) == len(set(seen)), sort
        assert unchanged <= set(seen), (sort, [m.get("birthDate") for m in made if m["id"] not in seen])
    # pages in a row give the order of one page, missing values last in both directions
    for order in ("birthdate", "-birthdate", "-birthdate,-_id"):
        q = {"identifier": f"urn:upd|{t}", "_sort": order}
        whole = [p["id"] for p in entries(api.get("/Patient", params={**q, "_count": 100}).json())]
        page = api.get("/Patient", params={**q, "_count": 2}).json()
        paged = [p["id"] for p in entries(page)]
        while (nxt := link(page, "next")) is not None:
            page = api.get(nxt).json()
            paged += [p["id"] for p in entries(page)]
        assert paged == whole and len(whole) == 8, order
        births = [p.get("birthDate") for p in entries(api.get("/Patient", params={**q, "_count": 100}).json())]
        assert births[5:] == [None, None, None], order
    # a cursor the server did not make is a 400 naming it, never a 500
    wrong_kind = base64.urlsafe_b64encode(json.dumps(["x", "Patient", "y"]).encode()).decode()
    for cursor in ("garbage!", wrong_kind, base64.urlsafe_b64encode(b"[1]").decode()):
        bad = api.get("/Patient", params={"identifier": f"urn:upd|{t}", "_cursor": cursor})
        assert bad.status_code == 400 and "_cursor" in bad.json()["issue"][0]["diagnostics"], bad.text


def test_total_summary_and_elements(api: FhirApi) -> None:
    t = tag()
    p = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:sum", "value": t}],
                     "name": [{"family": f"Sum{t}"}], "gender": "female",
                     "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                     "contact": [{"name": {"family": "Kin"}}], "maritalStatus": {"text": "single"}})
    q = {"identifier": f"urn:sum|{t}"}
    count = api.get("/Patient", params={**q, "_summary": "count"}).json()
    assert count["total"] == 1 and "entry" not in count
    assert api.get("/Patient", params={**q, "_total": "accurate", "_count": 0}).json()["total"] == 1
    summary = entries(api.get("/Patient", params={**q, "_summary": "true"}).json())[0]
    assert summary["name"] and summary["gender"] == "female"
    assert "contact" not in summary and "maritalStatus" not in summary and "text" not in summary
    assert any(tg["code"] == "SUBSETTED" for tg in summary["meta"]["tag"])
    data = entries(api.get("/Patient", params={**q, "_summary": "data"}).json())[0]
    assert "text" not in data and data["contact"]
    text = entries(api.get("/Patient", params={**q, "_summary": "text"}).json())[0]
    assert text["text"]["status"] == "generated" and "name" not in text
    elements = entries(api.get("/Patient", params={**q, "_elements": "gender"}).json())[0]
    assert set(elements) == {"resourceType", "id", "meta", "gender"}
    full = entries(api.get("/Patient", params=q).json())[0]
    assert full["contact"] and not any(tg.get("code") == "SUBSETTED" for tg in full["meta"].get("tag", []))
    read = api.get(f"/Patient/{p['id']}", params={"_summary": "true"}).json()
    assert "contact" not in read and read["name"] and any(tg["code"] == "SUBSETTED" for tg in read["meta"]["tag"])
    vread = api.get(f"/Patient/{p['id']}/_history/1", params={"_elements": "name"}).json()
    assert set(vread) == {"resourceType", "id", "meta", "name"}
    assert api.get(f"/Patient/{p['id']}", params={"_summary": "nope"}).status_code == 400


def test_include_revinclude_iterate_and_wildcard(api: FhirApi) -> None:
    t = tag()
    org = create(api, {"resourceType": "Organization", "name": f"Org{t}"})
    pat = create(api, {"resourceType": "Patient", "managingOrganization": {"reference": f"Organization/{org['id']}"}})
    o = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "identifier": [{"system": "urn:inc", "value": t}],
                     "subject": {"reference": f"Patient/{pat['id']}"}})
    q = {"identifier": f"urn:inc|{t}"}
    b = api.get("/Observation", params={**q, "_include": "Observation:subject"}).json()
    assert [r["id"] for r in entries(b)] == [o["id"]]
    assert [r["id"] for r in entries(b, "include")] == [pat["id"]]
    b = api.get("/Observation", params=[*q.items(), ("_include", "Observation:patient"),
                                        ("_include:iterate", "Patient:organization")]).json()
    assert sorted(r["id"] for r in entries(b, "include")) == sorted([pat["id"], org["id"]])
    b = api.get("/Observation", params={**q, "_include": "*"}).json()
    assert [r["id"] for r in entries(b, "include")] == [pat["id"]]
    b = api.get("/Observation", params={**q, "_include": "Observation:subject:Group"}).json()
    assert entries(b, "include") == []
    b = api.get("/Patient", params={"_id": pat["id"], "_revinclude": "Observation:subject"}).json()
    assert [r["id"] for r in entries(b)] == [pat["id"]] and [r["id"] for r in entries(b, "include")] == [o["id"]]
    b = api.get("/Organization", params=[("_id", org["id"]), ("_revinclude", "Patient:organization"),
                                         ("_revinclude:iterate", "Observation:patient")]).json()
    assert sorted(r["id"] for r in entries(b, "include")) == sorted([pat["id"], o["id"]])
    enc = create(api, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                       "subject": {"reference": f"Patient/{pat['id']}"}})
    b = api.get("/Patient", params={"_id": pat["id"], "_revinclude": "*"}).json()
    assert sorted(r["id"] for r in entries(b, "include")) == sorted([o["id"], enc["id"]])
    b = api.get("/Patient", params={"_id": pat["id"], "_revinclude": "Encounter:*"}).json()
    assert [r["id"] for r in entries(b, "include")] == [enc["id"]]
    b = api.get("/Organization", params=[("_id", org["id"]), ("_revinclude", "*"), ("_revinclude:iterate", "*")]).json()
    assert sorted(r["id"] for r in entries(b, "include")) == sorted([pat["id"], o["id"], enc["id"]])
    b = api.get("/Encounter", params=[("_id", enc["id"]), ("_include", "*"), ("_include:iterate", "*")]).json()
    assert sorted(r["id"] for r in entries(b, "include")) == sorted([pat["id"], org["id"]])


def test_compartment_search_and_everything(api: FhirApi) -> None:
    pat = create(api, {"resourceType": "Patient"})
    other = create(api, {"resourceType": "Patient"})
    ref = {"reference": f"Patient/{pat['id']}"}
    o = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": ref})
    create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                 "subject": {"reference": f"Patient/{other['id']}"}})
    doc = create(api, {"resourceType": "DocumentReference", "status": "current", "subject": ref,
                       "content": [{"attachment": {"contentType": "application/pdf"}}]})
    binary = create(api, {"resourceType": "Binary", "contentType": "text/plain", "securityContext": ref,
                          "data": base64.b64encode(b"note").decode()})
    got = api.get(f"/Patient/{pat['id']}/Observation").json()
    assert [r["id"] for r in entries(got)] == [o["id"]]
    assert link(got, "self").startswith(f"{api.base}/Patient/{pat['id']}/Observation")  # type: ignore[union-attr]
    assert api.get(f"/Patient/{uuid.uuid4()}/Observation").status_code == 404
    everything = api.get(f"/Patient/{pat['id']}/$everything").json()
    ids = {(r["resourceType"], r["id"]) for r in entries(everything)}
    assert ids == {("Patient", pat["id"]), ("Observation", o["id"]), ("DocumentReference", doc["id"]),
                   ("Binary", binary["id"])}
    typed = api.get(f"/Patient/{pat['id']}/$everything", params={"_type": "Observation,Binary"}).json()
    assert {r["resourceType"] for r in entries(typed)} == {"Observation", "Binary"}
    since = api.get(f"/Patient/{pat['id']}/$everything", params={"_since": doc["meta"]["lastUpdated"]}).json()
    assert {r["id"] for r in entries(since)} == {doc["id"], binary["id"]}
    paged = api.get(f"/Patient/{pat['id']}/$everything", params={"_count": 2}).json()
    assert len(entries(paged)) == 2 and link(paged, "next")
    everything_paged = [(r["resourceType"], r["id"]) for r in entries(paged)]
    while (nxt := link(paged, "next")) is not None:  # the operation's own paging links work
        answer = api.get(nxt)
        assert answer.status_code == 200, answer.text
        paged = answer.json()
        everything_paged += [(r["resourceType"], r["id"]) for r in entries(paged)]
    assert len(everything_paged) == 4 and set(everything_paged) == ids
    assert api.get(f"/Patient/{pat['id']}/$everything", params={"start": "2020"}).status_code == 400
    bad = api.get(f"/Patient/{pat['id']}/$everything", params={"_since": "garbage"})
    assert bad.status_code == 400 and "_since='garbage'" in bad.text and "_lastUpdated" not in bad.text, bad.text


def test_patient_context_client_gets_full_pages_and_right_totals(server: ServerProcess, api: FhirApi) -> None:
    t = tag()
    mine = create(api, {"resourceType": "Patient"})
    theirs = create(api, {"resourceType": "Patient"})
    my_obs = set()
    for i in range(6):
        # interleave: three of theirs, then one of mine, so an after-the-fact filter would leave pages short
        for _ in range(3):
            create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "identifier": [{"system": "urn:acc", "value": t}],
                         "subject": {"reference": f"Patient/{theirs['id']}"}})
        my_obs.add(create(api, {"resourceType": "Observation", "status": "final", "code": {"text": str(i)},
                                "identifier": [{"system": "urn:acc", "value": t}],
                                "subject": {"reference": f"Patient/{mine['id']}"}})["id"])
    create(api, {"resourceType": "Binary", "contentType": "text/plain", "data": "eA==",
                 "securityContext": {"reference": f"Patient/{theirs['id']}"}})
    create(api, {"resourceType": "List", "status": "current", "mode": "working",
                 "subject": {"reference": f"Patient/{theirs['id']}"},
                 "entry": [{"item": {"reference": f"Patient/{mine['id']}"}}]})
    own_binary = create(api, {"resourceType": "Binary", "contentType": "text/plain", "data": "eA==",
                              "securityContext": {"reference": f"Patient/{mine['id']}"}})
    token = client_token(server, f"pc{t}", "patient/*.rs", f"Patient/{mine['id']}")
    with httpx.Client(base_url=server.base, headers=bearer(token), timeout=60) as client:
        q = {"identifier": f"urn:acc|{t}", "_count": 4, "_total": "accurate"}
        page = client.get("/Observation", params=q).json()
        assert page["total"] == 6 and len(entries(page)) == 4
        seen = [r["id"] for r in entries(page)]
        while (nxt := link(page, "next")) is not None:
            page = client.get(nxt).json()
            seen += [r["id"] for r in entries(page)]
        assert set(seen) == my_obs and len(seen) == 6
        count = client.get("/Observation", params={"identifier": f"urn:acc|{t}", "_summary": "count"}).json()
        assert count["total"] == 6
        theirs_search = client.get("/Observation", params={"subject": f"Patient/{theirs['id']}"}).json()
        assert entries(theirs_search) == []
        binaries = client.get("/Binary", params={"_total": "accurate"}).json()
        assert [b["id"] for b in entries(binaries)] == [own_binary["id"]] and binaries["total"] == 1
        inc = client.get("/Observation", params={"identifier": f"urn:acc|{t}", "_include": "Observation:subject",
                                                 "_count": 1}).json()
        assert [r["id"] for r in entries(inc, "include")] == [mine["id"]]
        rev = client.get("/Patient", params={"_id": mine["id"], "_revinclude": "Observation:subject",
                                             "_count": 100}).json()
        assert {r["id"] for r in entries(rev, "include")} == my_obs
        # _revinclude=* obeys the same rules: the other patient's list naming this patient stays out
        rev_all = client.get("/Patient", params={"_id": mine["id"], "_revinclude": "*", "_count": 100}).json()
        assert {r["id"] for r in entries(rev_all, "include")} == my_obs


def test_chains_and_has_see_only_what_the_caller_may_read(server: ServerProcess, api: FhirApi) -> None:
    """A chain, `_has` or `_list` must not tell what resources the caller may not read hold: without an
    Observation scope `_has:Observation` is a 403 (without a List scope `_list` too), and for a
    patient-context client the other patient's resources (reachable from its own Patient through `link`)
    make no chain, `_has` or `_list` match."""
    t = tag()
    sick = create(api, {"resourceType": "Patient", "name": [{"family": f"S{t}"}]})
    create(api, {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{sick['id']}"},
                 "code": {"coding": [{"system": "urn:dx", "code": f"hiv{t}"}]}})
    token = client_token(server, f"po{t}", "system/Patient.rs")
    with httpx.Client(base_url=server.base, headers=bearer(token), timeout=60) as client:
        assert client.get("/Patient", params={"_id": sick["id"]}).json()["total"] == 1
        probe = client.get("/Patient", params={"_has:Observation:subject:code": f"urn:dx|hiv{t}"})
        assert probe.status_code == 403, probe.text
        assert "Observation" in probe.json()["issue"][0]["diagnostics"]
        listed = create(api, {"resourceType": "List", "status": "current", "mode": "working",
                              "entry": [{"item": {"reference": f"Patient/{sick['id']}"}}]})
        assert client.get("/Patient", params={"_list": listed["id"]}).status_code == 403  # no List scope
    mine = create(api, {"resourceType": "Patient", "name": [{"family": f"M{t}"}]})
    # the other patient links to mine, so it lies in my compartment; its Observation does not
    other = create(api, {"resourceType": "Patient", "name": [{"family": f"O{t}"}],
                         "link": [{"other": {"reference": f"Patient/{mine['id']}"}, "type": "seealso"}]})
    create(api, {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{other['id']}"},
                 "code": {"coding": [{"system": "urn:dx", "code": f"flu{t}"}]}})
    their_list = create(api, {"resourceType": "List", "status": "current", "mode": "working",
                              "subject": {"reference": f"Patient/{sick['id']}"},
                              "entry": [{"item": {"reference": f"Patient/{mine['id']}"}}]})
    my_list = create(api, {"resourceType": "List", "status": "current", "mode": "working",
                           "subject": {"reference": f"Patient/{mine['id']}"},
                           "entry": [{"item": {"reference": f"Patient/{mine['id']}"}}]})
    token = client_token(server, f"pl{t}", "patient/*.rs", f"Patient/{mine['id']}")
    with httpx.Client(base_url=server.base, headers=bearer(token), timeout=60) as client:
        assert client.get("/Patient", params={"_id": other["id"]}).json()["total"] == 1  # readable: in my compartment
        assert client.get("/Observation", params={"code": f"urn:dx|flu{t}"}).json()["total"] == 0
        has = client.get("/Patient", params={"_has:Observation:subject:code": f"urn:dx|flu{t}"}).json()
        assert has["total"] == 0, has
        flt = client.get("/Patient", params={"_filter": f"_id eq {other['id']}"}).json()
        assert flt["total"] == 1
        # the other patient's List naming my Patient is not mine to read, so `_list` finds nothing through it
        assert client.get("/Patient", params={"_list": their_list["id"]}).json()["total"] == 0
        assert client.get("/Patient", params={"_list": my_list["id"]}).json()["total"] == 1
    admin_has = api.get("/Patient", params={"_has:Observation:subject:code": f"urn:dx|flu{t}"}).json()
    assert [p["id"] for p in entries(admin_has)] == [other["id"]]


def test_conditional_create_uses_search(api: FhirApi) -> None:
    t = tag()
    body = {"resourceType": "Patient", "name": [{"family": f"Cond{t}"}]}
    first = api.post("/Patient", json=body, headers={**FHIR, "If-None-Exist": f"family=Cond{t}"})
    assert first.status_code == 201
    again = api.post("/Patient", json=body, headers={**FHIR, "If-None-Exist": f"family=cond{t}"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    bad = api.post("/Patient", json=body, headers={**FHIR, "If-None-Exist": "nonsense=1"})
    assert bad.status_code == 400 and "nonsense" in bad.text


def test_batch_search_entry_and_cli(server: ServerProcess, api: FhirApi) -> None:
    t = tag()
    p = create(api, {"resourceType": "Patient", "name": [{"family": f"Batch{t}"}]})
    r = api.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient?family=batch{t}&nonsense=1"}}]})
    inner = r.json()["entry"][0]["resource"]
    assert [e["resource"]["id"] for e in inner["entry"] if e["search"]["mode"] == "match"] == [p["id"]]
    assert any(e["search"]["mode"] == "outcome" for e in inner["entry"])
    creds = json.loads((server.data_dir / "admin-client.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    env.update({"FHIRVAULT_URL": server.base, "FHIRVAULT_CLIENT_ID": creds["client_id"],
                "FHIRVAULT_CLIENT_SECRET": creds["client_secret"]})
    done = subprocess.run([sys.executable, "-m", "fhirvault.cli", "search", "Patient", f"family=batch{t}",
                           "nonsense=1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == [p["id"]]
    assert "nonsense" in done.stderr and "warning" in done.stderr


def test_reindex_command_rebuilds_the_index(server: ServerProcess, api: FhirApi) -> None:
    t = tag()
    p = create(api, {"resourceType": "Patient", "name": [{"family": f"Re{t}"}]})
    done = server.cli("reindex", "Patient")
    assert done.returncode == 0, done.stderr
    assert "reindexed" in done.stdout
    got: Any = api.get("/Patient", params={"family": f"re{t}"}).json()
    assert [r["id"] for r in entries(got)] == [p["id"]]
    assert server.cli("reindex", "Nope").returncode == 2


def test_history_since_and_at(api: FhirApi) -> None:
    v1 = create(api, {"resourceType": "Patient", "active": True})
    pid = v1["id"]
    v2 = api.put(f"/Patient/{pid}", json={**v1, "active": False}, headers=FHIR).json()
    v3 = api.put(f"/Patient/{pid}", json={**v1, "gender": "other"}, headers=FHIR).json()

    def versions(params: dict) -> list[str]:
        r = api.get(f"/Patient/{pid}/_history", params=params)
        assert r.status_code == 200, r.text
        return [e["resource"]["meta"]["versionId"] for e in r.json().get("entry", [])]

    assert versions({"_at": v1["meta"]["lastUpdated"]}) == ["1"]
    assert versions({"_at": v2["meta"]["lastUpdated"]}) == ["2"]
    assert versions({"_at": v3["meta"]["lastUpdated"][:4]}) == ["3", "2", "1"]
    assert versions({"_at": "1999"}) == []
    assert versions({"_since": v2["meta"]["lastUpdated"]}) == ["3", "2"]
    assert api.get(f"/Patient/{pid}/_history", params={"_at": "soon"}).status_code == 400


def test_a_result_parameter_given_twice_is_a_400(api: FhirApi) -> None:
    """`_count`, `_sort`, `_summary`, `_elements`, `_total`, `_offset` take one value each; a second one
    silently replaced the first (`_summary=count&_summary=true` answered 20 entries and no total). `-`
    marks a descending key once: `_sort=--family` named no parameter and was taken as descending."""
    for params in ([("_summary", "count"), ("_summary", "true")], [("_count", "1"), ("_count", "2")],
                   [("_sort", "family"), ("_sort", "-family")], [("_total", "none"), ("_total", "accurate")],
                   [("_elements", "name"), ("_elements", "gender")]):
        r = api.get("/Patient", params=params)
        assert r.status_code == 400 and "more than once" in r.text, (params, r.text)
        assert params[0][0] in r.json()["issue"][0]["diagnostics"]
    for bad in ("--family", "---family", "-"):
        r = api.get("/Patient", params={"_sort": bad})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", (bad, r.text)
    # lists in one value, and repeated _include, stay as they were
    assert api.get("/Patient", params={"_sort": "family,-birthdate", "_elements": "name,gender"}).status_code == 200
    assert api.get("/Observation", params=[("_include", "Observation:subject"),
                                            ("_include", "Observation:performer")]).status_code == 200


def test_an_include_that_can_include_nothing_is_reported(api: FhirApi) -> None:
    """`Patient?_include=Observation:subject` follows references of Observations, which a Patient search
    never returns, and `Patient?_revinclude=Encounter:practitioner` takes Encounters that refer to
    Practitioners: both include nothing. They were ignored without a word; now the page says so in an
    outcome entry (R4 3.1.1.5.5), and strict handling refuses them."""
    for params, named in (({"_include": "Observation:subject"}, "_revinclude=Observation:subject"),
                          ({"_revinclude": "Encounter:practitioner"}, "Practitioner")):
        page = api.get("/Patient", params={**params, "_count": 1}).json()
        notes = [i["diagnostics"] for e in page.get("entry", []) if e["search"]["mode"] == "outcome"
                 for i in e["resource"]["issue"]]
        assert any("includes nothing" in n and named in n for n in notes), (params, notes)
        strict = api.get("/Patient", params=params, headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400 and "includes nothing" in strict.text, strict.text
    page = api.get("/Observation", params={"_include": "Observation:subject", "_revinclude": "Provenance:target",
                                           "_count": 1}).json()
    assert not [e for e in page.get("entry", []) if e["search"]["mode"] == "outcome"]
    iterate = api.get("/Patient", params={"_include:iterate": "Observation:subject"},
                      headers={"Prefer": "handling=strict"})
    assert iterate.status_code == 200  # :iterate follows included resources too, of any type


def test_revinclude_with_a_target_type_takes_only_references_to_that_type(api: FhirApi) -> None:
    """`_revinclude=Observation:subject:Group` on a Patient search takes Observations whose subject is one
    of the matches *and a Group*: none. It included the Patient's Observations, beside a warning saying
    it includes nothing."""
    t = tag()
    pat = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": t}]})
    obs = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": t},
                       "subject": {"reference": f"Patient/{pat['id']}"}})
    mine = {"identifier": f"urn:t|{t}"}
    for rev, expected in (("Observation:subject:Group", []), ("Observation:subject:Patient", [obs["id"]]),
                          ("Observation:subject", [obs["id"]])):
        for name in ("_revinclude", "_revinclude:iterate"):
            page = api.get("/Patient", params={**mine, name: rev}).json()
            assert [r["id"] for r in entries(page, "include")] == expected, (name, rev)
    # a hint to use _revinclude only where that parameter can refer to the searched type
    page = api.get("/Observation", params={"_include": "Patient:organization", "_count": 1}).json()
    notes = [i["diagnostics"] for e in page.get("entry", []) if e["search"]["mode"] == "outcome"
             for i in e["resource"]["issue"]]
    assert any("includes nothing" in n for n in notes) and not any("_revinclude" in n for n in notes), notes


def test_an_include_through_a_parameter_that_never_refers_to_its_target_is_reported(api: FhirApi) -> None:
    """Observation `subject` never refers to a Practitioner: `_include=Observation:subject:Practitioner`
    includes nothing. It passed without a word, even under strict handling; an empty `_elements` answered
    the whole resource, and a time zone beyond +-14:00 in a search date was taken."""
    for name in ("_include", "_include:iterate", "_revinclude"):
        params = {name: "Observation:subject:Practitioner", "_count": 1}
        page = api.get("/Observation" if name != "_revinclude" else "/Practitioner", params=params).json()
        notes = [i["diagnostics"] for e in page.get("entry", []) if e["search"]["mode"] == "outcome"
                 for i in e["resource"]["issue"]]
        assert any("never to Practitioner" in n for n in notes), (name, notes)
        strict = api.get("/Observation", params=params, headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400, strict.text
    assert api.get("/Patient", params={"_elements": ","}).status_code == 400
    # a path is not an element name: it was dropped without a word, on search and read alike
    for path in ("/Patient", "/Patient/x"):
        r = api.get(path, params={"_elements": "name,identifier.value"})
        assert r.status_code == 400 and "identifier.value" in r.text, r.text
    for late in ("2020-01-01T00:00:00-15:00", "2020-01-01T00:00:00+14:30"):
        r = api.get("/Patient", params={"_lastUpdated": late})
        assert r.status_code == 400 and late in r.text, r.text
        r = api.get("/Patient/_history", params={"_since": late})
        assert r.status_code == 400 and "timedelta" not in r.text, r.text
    assert api.get("/Patient", params={"_lastUpdated": "ge2020-01-01T00:00:00+14:00"}).status_code == 200
