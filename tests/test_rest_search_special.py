"""Special search parameters and terminology modifiers over real HTTP (SQLite and PostgreSQL): `_text`,
`_content`, `_list`, Location `near`, token `:in` / `:not-in` / `:below` / `:above` against ValueSets
and CodeSystems stored on the server."""

from __future__ import annotations

import math
import uuid

from tests.support.searching import FHIR, create, found, refused
from tests.support.server import FhirApi


def narrative(text: str) -> dict:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{text}</p></div>'}


def test_text_and_content_match_words_case_and_accent_insensitively(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    ident = {"system": "urn:txt", "value": t}
    a = create(api, {"resourceType": "Condition", "identifier": [ident], "subject": {"reference": "Patient/x"},
                     "text": narrative("Sévère <b>Bronchite</b> &amp; fièvre"), "note": [{"text": "asthma follow-up"}]})
    b = create(api, {"resourceType": "Condition", "identifier": [ident], "subject": {"reference": "Patient/x"},
                     "text": narrative("Mild cough"), "code": {"text": "Bronchitis, acute"}})
    q = {"identifier": f"urn:txt|{t}"}
    assert found(api, "/Condition", {**q, "_text": "severe"}) == [a["id"]]
    assert found(api, "/Condition", {**q, "_text": "BRONCH"}) == [a["id"]]  # words start with the value
    assert found(api, "/Condition", {**q, "_text": "fievre severe"}) == [a["id"]]  # every word
    assert found(api, "/Condition", {**q, "_text": "fievre cough"}) == []
    assert found(api, "/Condition", {**q, "_text": "fievre,cough"}) == sorted([a["id"], b["id"]])  # OR
    assert found(api, "/Condition", {**q, "_text": "ronchite"}) == []  # not inside a word
    assert found(api, "/Condition", {**q, "_text": "asthma"}) == []  # not in the narrative
    assert found(api, "/Condition", {**q, "_content": "asthma"}) == [a["id"]]
    assert found(api, "/Condition", {**q, "_content": "bronchitis acute"}) == [b["id"]]
    assert found(api, "/Condition", {**q, "_content": "bronch"}) == sorted([a["id"], b["id"]])
    assert found(api, "/Condition", {**q, "_content": "acute"}) == [b["id"]]
    # identifiers, systems, references and dates are no text: searched by their own parameters
    assert found(api, "/Condition", {**q, "_content": "Patient"}) == []
    assert found(api, "/Condition", {**q, "_content": "urn"}) == []
    refused(api, "/Condition", {"_text": "&&"}, "_text", "no word")
    refused(api, "/Condition", {"_text": " ".join(f"w{i}" for i in range(21))}, "_text", "21 words")
    refused(api, "/Condition", {"_text:exact": "x"}, "_text")
    # Binary has no narrative: _text is no parameter of it (strict: 400 naming it)
    r = api.get("/Binary", params={"_text": "x"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and "_text" in r.text
    # an update changes the words: the index follows the current version
    a2 = {**a, "text": narrative("Resolved")}
    assert api.put(f"/Condition/{a['id']}", json=a2, headers=FHIR).status_code == 200
    assert found(api, "/Condition", {**q, "_text": "severe"}) == []
    assert found(api, "/Condition", {**q, "_text": "resolved"}) == [a["id"]]


def test_list_selects_the_items_of_a_list(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    ident = {"system": "urn:lst", "value": t}
    p1 = create(api, {"resourceType": "Patient", "identifier": [ident]})
    p2 = create(api, {"resourceType": "Patient", "identifier": [ident]})
    p3 = create(api, {"resourceType": "Patient", "identifier": [ident]})
    lst = create(api, {"resourceType": "List", "status": "current", "mode": "working", "entry": [
        {"item": {"reference": f"Patient/{p1['id']}"}}, {"item": {"reference": f"Patient/{p3['id']}"}}]})
    other = create(api, {"resourceType": "List", "status": "current", "mode": "working", "entry": [
        {"item": {"reference": f"Patient/{p2['id']}"}}]})
    q = {"identifier": f"urn:lst|{t}"}
    assert found(api, "/Patient", {**q, "_list": f"List/{lst['id']}"}) == sorted([p1["id"], p3["id"]])
    assert found(api, "/Patient", {**q, "_list": lst["id"]}) == sorted([p1["id"], p3["id"]])
    assert found(api, "/Patient", {**q, "_list": f"{api.base}/List/{other['id']}"}) == [p2["id"]]
    assert found(api, "/Patient", {**q, "_list": f"{lst['id']},{other['id']}"}) \
        == sorted([p1["id"], p2["id"], p3["id"]])
    assert found(api, "/Observation", {"_list": lst["id"]}) == []
    assert found(api, "/Patient", {**q, "_list": "no-such-list"}) == []
    refused(api, "/Patient", {"_list": "$current-allergies"}, "_list", "functional")
    refused(api, "/Patient", {"_list": "Patient/1"}, "_list", "not a List")
    assert api.delete(f"/List/{lst['id']}").status_code == 204
    assert found(api, "/Patient", {**q, "_list": lst["id"]}) == []  # a deleted list has no items


def test_near_finds_locations_by_great_circle_distance(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]

    def loc(lat: float, lon: float) -> dict:
        return create(api, {"resourceType": "Location", "identifier": [{"system": "urn:near", "value": t}],
                            "position": {"latitude": lat, "longitude": lon}})

    paris = loc(48.8566, 2.3522)
    versailles = loc(48.8049, 2.1204)  # 17.9 km from Paris
    london = loc(51.5074, -0.1278)  # 343.6 km from Paris
    suva = loc(-18.1248, 178.4501)  # across the antimeridian from Taveuni
    taveuni = loc(-16.8, -179.97)  # about 225 km from Suva
    q = {"identifier": f"urn:near|{t}"}

    def near(value: str) -> list[str]:
        return found(api, "/Location", {**q, "near": value})

    assert near("48.8566|2.3522|1|km") == [paris["id"]]
    assert near("48.8566|2.3522|20|km") == sorted([paris["id"], versailles["id"]])
    assert near("48.8566|2.3522|17|km") == [paris["id"]]
    assert near("48.8566|2.3522|18000|m") == sorted([paris["id"], versailles["id"]])
    assert near("48.8566|2.3522|350") == sorted([paris["id"], versailles["id"], london["id"]])  # km by default
    assert near("48.8566|2.3522|215|[mi_i]") == sorted([paris["id"], versailles["id"], london["id"]])
    assert near("48.8566|2.3522|200|[mi_i]") == sorted([paris["id"], versailles["id"]])
    assert near("-18.1248|178.4501|230|km") == sorted([suva["id"], taveuni["id"]])
    assert near("-18.1248|178.4501|200|km") == [suva["id"]]
    assert near("48.8566|2.3522") == [paris["id"]]  # the default distance, 5 km
    assert near("0|0|1,51.5|-0.13|2") == [london["id"]]
    # the figure the test relies on
    lat1, lon1, lat2, lon2 = map(math.radians, (48.8566, 2.3522, 48.8049, 2.1204))
    d = 2 * 6371.0088 * math.asin(math.sqrt(math.sin((lat2 - lat1) / 2) ** 2
                                             + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2))
    assert 17 < d < 18
    refused(api, "/Location", {"near": "91|0|1|km"}, "near", "latitude")
    refused(api, "/Location", {"near": "a|b"}, "near")
    refused(api, "/Location", {"near": "1|2|3|furlongs"}, "near", "furlongs")
    refused(api, "/Location", {"near:missing": "true"}, "near")


def test_token_in_not_in_below_above_use_terminology_stored_here(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    cs_url = f"http://example.org/{t}/CodeSystem/findings"
    create(api, {"resourceType": "CodeSystem", "status": "active", "content": "complete", "url": cs_url,
                 "hierarchyMeaning": "is-a", "concept": [
                     {"code": "disorder", "concept": [
                         {"code": "lung", "concept": [{"code": "asthma"}, {"code": "copd"}]},
                         {"code": "heart"}]},
                     {"code": "finding", "concept": [{"code": "cough"}]},
                     {"code": "wheeze", "property": [{"code": "parent", "valueCode": "finding"}]}]})
    vs_url = f"http://example.org/{t}/ValueSet/lung"
    create(api, {"resourceType": "ValueSet", "status": "active", "url": vs_url, "compose": {"include": [
        {"system": cs_url, "filter": [{"property": "concept", "op": "is-a", "value": "lung"}]},
        {"system": "http://snomed.info/sct", "concept": [{"code": "195967001"}]}]}})
    vs2 = create(api, {"resourceType": "ValueSet", "status": "active", "url": f"http://example.org/{t}/ValueSet/f",
                       "compose": {"include": [{"system": cs_url, "concept": [{"code": "cough"}, {"code": "wheeze"}]}],
                                   "exclude": [{"system": cs_url, "concept": [{"code": "wheeze"}]}]}})
    made = {}
    for system, code in ((cs_url, "lung"), (cs_url, "asthma"), (cs_url, "copd"), (cs_url, "heart"), (cs_url, "cough"),
                         (cs_url, "wheeze"), ("http://snomed.info/sct", "195967001"), ("urn:other", "asthma")):
        made[(system, code)] = create(api, {"resourceType": "Condition", "subject": {"reference": "Patient/x"},
                                            "identifier": [{"system": "urn:term", "value": t}],
                                            "code": {"coding": [{"system": system, "code": code}]}})["id"]
    q = {"identifier": f"urn:term|{t}"}

    def ids(*keys: tuple[str, str]) -> list[str]:
        return sorted(made[k] for k in keys)

    assert found(api, "/Condition", {**q, "code:in": vs_url}) == ids(
        (cs_url, "lung"), (cs_url, "asthma"), (cs_url, "copd"), ("http://snomed.info/sct", "195967001"))
    assert found(api, "/Condition", {**q, "code:in": f"ValueSet/{vs2['id']}"}) == ids((cs_url, "cough"))
    assert found(api, "/Condition", {**q, "code:not-in": vs_url}) == ids(
        (cs_url, "heart"), (cs_url, "cough"), (cs_url, "wheeze"), ("urn:other", "asthma"))
    assert found(api, "/Condition", {**q, "code:below": f"{cs_url}|disorder"}) == ids(
        (cs_url, "lung"), (cs_url, "asthma"), (cs_url, "copd"), (cs_url, "heart"))
    assert found(api, "/Condition", {**q, "code:below": f"{cs_url}|finding"}) == ids(
        (cs_url, "cough"), (cs_url, "wheeze"))  # wheeze by its parent property
    assert found(api, "/Condition", {**q, "code:above": f"{cs_url}|copd"}) == ids((cs_url, "copd"), (cs_url, "lung"))
    assert found(api, "/Condition", {**q, "code:above": f"{cs_url}|wheeze"}) == ids((cs_url, "wheeze"))
    heart_or_above = found(api, "/Condition", {**q, "code:above": f"{cs_url}|heart"})
    assert heart_or_above == ids((cs_url, "heart"))  # disorder, its parent, codes nothing here
    refused(api, "/Condition", {"code:in": f"http://example.org/{t}/ValueSet/missing"}, "ValueSet/missing",
            "not stored")
    refused(api, "/Condition", {"code:below": "http://unknown.example/cs|x"}, "http://unknown.example/cs")
    refused(api, "/Condition", {"code:below": f"{cs_url}|nonsense"}, "nonsense")
    refused(api, "/Condition", {"code:below": "asthma"}, "system|code")
    create(api, {"resourceType": "ValueSet", "status": "active", "url": f"urn:vs:{t}:regex", "compose": {
        "include": [{"system": cs_url, "filter": [{"property": "display", "op": "regex", "value": ".*"}]}]}})
    refused(api, "/Condition", {"code:in": f"urn:vs:{t}:regex"}, "regex", "not supported")


def test_filter_maps_to_the_same_criteria_as_plain_parameters(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:10]
    ident = {"system": "urn:flt", "value": t}
    org = create(api, {"resourceType": "Organization", "name": f"Clinic {t}"})
    peter = create(api, {"resourceType": "Patient", "identifier": [ident], "gender": "male",
                         "name": [{"family": f"Péterson{t}", "given": ["Peter"]}], "birthDate": "2015-01-02",
                         "managingOrganization": {"reference": f"Organization/{org['id']}"}})
    anna = create(api, {"resourceType": "Patient", "identifier": [ident], "gender": "female",
                        "name": [{"family": f"Annas{t}", "given": ["Anna"]}], "birthDate": "2010-05-06"})
    nobody = create(api, {"resourceType": "Patient", "identifier": [ident], "gender": "other"})
    q = {"identifier": f"urn:flt|{t}"}

    def f(expr: str) -> list[str]:
        return found(api, "/Patient", {**q, "_filter": expr})

    assert f('name co "eter"') == [peter["id"]]
    assert f(f'family eq "peterson{t}"') == [peter["id"]]  # eq: whole value, case and accents aside
    assert f('family eq "peterson"') == []
    assert f(f'family ew "SON{t}"') == [peter["id"]]
    assert f('given sw "an"') == [anna["id"]]
    assert f('given eq "peter" and birthdate ge 2014-10-10') == [peter["id"]]
    assert f("birthdate lt 2014 or gender eq other") == sorted([anna["id"], nobody["id"]])
    assert f("gender eq male or gender eq female and birthdate lt 2012") == sorted([peter["id"], anna["id"]])
    assert f("(gender eq male or gender eq female) and birthdate lt 2012") == [anna["id"]]
    assert f("not (gender eq male)") == sorted([anna["id"], nobody["id"]])
    assert f("gender ne male") == sorted([anna["id"], nobody["id"]])
    assert f("birthdate pr false") == [nobody["id"]]
    assert f("birthdate pr true") == sorted([peter["id"], anna["id"]])
    assert f("birthdate po 2015") == [peter["id"]]
    assert f(f'organization.name co "clinic {t}"') == [peter["id"]]
    assert f(f"organization re Organization/{org['id']}") == [peter["id"]]
    assert f(f"_id eq {anna['id']}") == [anna["id"]]
    assert f('name eq "a,b"') == []  # a comma inside a _filter string is no OR
    both = found(api, "/Patient", [*q.items(), ("_filter", "gender ne other"), ("_filter", "birthdate gt 2012")])
    assert both == [peter["id"]]  # repeated _filter: AND
    refused(api, "/Patient", {"_filter": " or ".join(["gender eq male"] * 101)}, "101 comparisons")
    r = api.post("/Patient/_search", data={**q, "_filter": "gender eq female"})
    assert r.status_code == 200 and [e["resource"]["id"] for e in r.json()["entry"]] == [anna["id"]]
    for expr, words in (("nonsense eq 1", ["nonsense", "not a search parameter"]),
                        ("gender co m", ["gender", "token"]),
                        ("birthdate co 2015", ["birthdate"]),
                        ("name eq", ["_filter", "value"]),
                        ("gender eq male and", ["_filter"]),
                        ("link[type eq seealso].other pr true", ["[", "not supported"]),
                        ("birthdate gt notadate", ["birthdate", "notadate"])):
        # strict or not: an unknown parameter inside _filter is a 400, never silently dropped
        refused(api, "/Patient", {"_filter": expr}, *words)


def test_missing_on_id_and_last_updated(api: FhirApi) -> None:
    p = create(api, {"resourceType": "Patient"})
    assert found(api, "/Patient", {"_id": p["id"], "_lastUpdated:missing": "true"}) == []
    assert found(api, "/Patient", {"_id": p["id"], "_lastUpdated:missing": "false"}) == [p["id"]]
    assert found(api, "/Patient", {"_id": p["id"], "_id:missing": "true"}) == []
    refused(api, "/Patient", {"_id:missing": "maybe"}, "_id:missing")


def test_not_on_id(api: FhirApi) -> None:
    """`_id` is a token (R4 search.html#id), so `:not` applies: every resource but the named ones."""
    family = f"notid{uuid.uuid4().hex[:8]}"
    a, b, c = (create(api, {"resourceType": "Patient", "name": [{"family": family}]}) for _ in range(3))
    assert sorted(found(api, "/Patient", {"family": family, "_id:not": a["id"]})) == sorted([b["id"], c["id"]])
    assert found(api, "/Patient", {"family": family, "_id:not": f"{a['id']},{b['id']}"}) == [c["id"]]
    refused(api, "/Patient", {"_id:exact": a["id"]}, "_id", "exact")
