"""`previous` links of a searchset over real HTTP (FHIR R4 http.html#paging): keyset paging backwards, so
that walking back from the last page to the first skips and repeats nothing while resources on earlier
pages are updated or deleted, for every sort (parameter keys with missing values, descending keys,
several keys, the default `_lastUpdated` order), system, compartment and `$everything` searches."""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from typing import Any

import httpx

from tests.support.searching import FHIR, create
from tests.support.server import FhirApi


def keys(bundle: dict) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def link(bundle: dict, relation: str) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == relation), None)


def get(api: FhirApi, url: str, params: Any = None) -> dict:
    r = api.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()


_changes = itertools.count()


def change(api: FhirApi, key: str) -> None:
    """Takes `key` (`Type/id`) out of a pinned result: deletes it or updates it, in turn."""
    if next(_changes) % 2:
        assert api.delete(f"/{key}").status_code in (200, 204)
        return
    resource = get(api, f"/{key}")
    resource["language"] = "de" if resource.get("language") != "de" else "en"
    assert api.put(f"/{key}", json=resource, headers=FHIR).status_code == 200


def walk_forward(api: FhirApi, page: dict) -> tuple[list[str], dict]:
    """Every match from `page` on, following `next`; and the last page."""
    seen = keys(page)
    while (nxt := link(page, "next")) is not None:
        page = get(api, nxt)
        seen += keys(page)
    return seen, page


def walk_back_changing(api: FhirApi, last: dict, order: list[str], count: int, keep: str = "") -> None:
    """From the page `last` (whose matches end `order`, the whole result), follow `previous` to the first
    page; before each step, take two resources that come before the current page out of the result (the
    one just before it and the first of all, but not `keep`). The pages read backwards must hold, in
    order, exactly the resources that stayed in the result, each a full page but the first; `next` from
    the first page then walks them forward again."""
    changed: set[str] = set()
    page = last
    back = [keys(page)]
    while (prev := link(page, "previous")) is not None:
        first = back[-1][0] if back[-1] else None
        ahead = [k for k in order[:order.index(first)] if k not in changed and k != keep] if first is not None else []
        if len(ahead) > 4:
            for key in (ahead[-1], ahead[0]):
                change(api, key)
                changed.add(key)
        page = get(api, prev)
        back.append(keys(page))
        assert len(back) <= len(order) + 1, "previous links loop"
    stayed = [k for k in order if k not in changed]
    assert changed, "the walk changed nothing"
    got = [k for p in reversed(back) for k in p]
    assert got == stayed, (got, stayed)
    assert all(len(p) == count for p in back[1:-1]), [len(p) for p in back]  # full pages but first and last
    again, _ = walk_forward(api, page)
    assert again == stayed


def make_patients(api: FhirApi, t: str, n: int = 13) -> None:
    for i in range(n):
        patient: dict[str, Any] = {"resourceType": "Patient", "identifier": [{"system": "urn:prev", "value": t}]}
        if i % 3:  # a third without a birth date, and ties among the rest
            patient["birthDate"] = f"19{50 + i % 4}-01-01"
        if i % 4 != 1:
            patient["name"] = [{"family": f"f{i % 5}"}]
        create(api, patient)


def test_previous_links_walk_back_while_earlier_pages_change(api: FhirApi) -> None:
    count = 3
    for sort in ({}, {"_sort": "birthdate"}, {"_sort": "-birthdate"}, {"_sort": "-birthdate,family"},
                 {"_sort": "family,-_lastUpdated"}, {"_sort": "-_lastUpdated"}, {"_sort": "-_id"}):
        t = uuid.uuid4().hex[:12]
        make_patients(api, t)
        q = {"identifier": f"urn:prev|{t}", **sort}
        whole = keys(get(api, "/Patient", {**q, "_count": 100}))
        assert len(whole) == 13
        order, last = walk_forward(api, get(api, "/Patient", {**q, "_count": count}))
        assert order == whole, sort
        walk_back_changing(api, last, order, count)


def make_compartment(api: FhirApi, t: str) -> str:
    """A Patient with nine Observations (a third without a date, ties among the rest) and nine Basic
    resources about it, all tagged `urn:prev|t`; its id."""
    patient = create(api, {"resourceType": "Patient", "identifier": [{"system": "urn:prev", "value": t}]})
    ref = {"reference": f"Patient/{patient['id']}"}
    for i in range(9):
        obs: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                               "subject": ref, "meta": {"tag": [{"system": "urn:prev", "code": t}]}}
        if i % 3:
            obs["effectiveDateTime"] = f"2020-01-0{1 + i % 4}"
        create(api, obs)
        create(api, {"resourceType": "Basic", "code": {"text": "x"}, "subject": ref,
                     "meta": {"tag": [{"system": "urn:prev", "code": t}]}})
    return str(patient["id"])


def test_previous_links_of_system_compartment_and_everything_searches(api: FhirApi) -> None:
    searches: list[tuple[str, dict[str, Any]]] = [
        ("/", {"_type": "Basic,Observation"}),
        ("/", {"_type": "Basic,Observation", "_sort": "-_lastUpdated"}),
        ("/Patient/{pid}/Observation", {"_sort": "date"}),
        ("/Patient/{pid}/Observation", {"_sort": "-date"}),
        ("/Patient/{pid}/$everything", {}),
    ]
    for path, q in searches:
        t = uuid.uuid4().hex[:12]
        pid = make_compartment(api, t)
        path = path.format(pid=pid)
        if path == "/":
            q = {**q, "_tag": f"urn:prev|{t}"}
        whole = keys(get(api, path, {**q, "_count": 100}))
        assert len(whole) >= 9, (path, q)
        order, last = walk_forward(api, get(api, path, {**q, "_count": 2}))
        assert order == whole, (path, q)
        walk_back_changing(api, last, order, 2, keep=f"Patient/{pid}")  # $everything needs the patient


def test_previous_link_of_an_offset_page_and_forged_before(api: FhirApi) -> None:
    t = uuid.uuid4().hex[:12]
    make_patients(api, t, 9)
    q = {"identifier": f"urn:prev|{t}", "_sort": "birthdate"}
    whole = keys(get(api, "/Patient", {**q, "_count": 100}))
    # a page of the older `_offset` form of links still answers, and its `previous` link is keyset too
    page = get(api, "/Patient", {**q, "_count": 3, "_offset": 6})
    assert keys(page) == whole[6:]
    change(api, whole[0])
    change(api, whole[1])
    back = get(api, link(page, "previous"))  # type: ignore[arg-type]
    assert keys(back) == whole[3:6]
    first = get(api, link(back, "previous"))  # type: ignore[arg-type]
    assert keys(first) == whole[2:3] and link(first, "previous") is None
    # a `next` link whose page has emptied meanwhile (all after it left the result): `previous` from the empty
    # page is the page that ended where it starts, and from there back to the first
    whole = keys(get(api, "/Patient", {**q, "_count": 100}))  # what is left, the one updated in its new place
    assert len(whole) >= 5
    page = get(api, "/Patient", {**q, "_count": 2})
    page = get(api, link(page, "next"))  # type: ignore[arg-type]
    assert keys(page) == whole[2:4]
    nxt = link(page, "next")
    for key in whole[4:]:
        assert api.delete(f"/{key}").status_code in (200, 204)
    empty = get(api, nxt)  # type: ignore[arg-type]
    assert keys(empty) == [] and link(empty, "next") is None
    again = get(api, link(empty, "previous"))  # type: ignore[arg-type]
    assert keys(again) == whole[2:4]
    first = get(api, link(again, "previous"))  # type: ignore[arg-type]
    assert keys(first) == whole[:2] and link(first, "previous") is None
    # a `_before` the server did not make is a 400 naming it, never a 500 nor an ignored parameter
    wrong_kind = base64.urlsafe_b64encode(json.dumps(["x", "Patient", "y"]).encode()).decode()
    for cursor in ("garbage!", wrong_kind, base64.urlsafe_b64encode(b"[1]").decode()):
        bad = api.get("/Patient", params={**q, "_before": cursor})
        assert bad.status_code == 400 and "_before" in bad.json()["issue"][0]["diagnostics"], bad.text
    # one direction at a time
    cursor = link(get(api, "/Patient", {**q, "_count": 2}), "next").split("_cursor=")[1]  # type: ignore[union-attr]
    both = api.get("/Patient", params={**q, "_cursor": cursor, "_before": cursor})
    assert both.status_code == 400 and "_before" in both.json()["issue"][0]["diagnostics"], both.text


def test_paging_links_keep_one_moment_however_far_they_are_followed(api: FhirApi) -> None:
    """Each page's links pin the first page's moment once: a page reached through a link adds no
    `_lastUpdated` of its own, so links do not grow page by page (past 100 parameters, a 400)."""
    t = uuid.uuid4().hex[:12]
    make_patients(api, t, 6)
    q = {"identifier": f"urn:prev|{t}", "_sort": "birthdate", "_lastUpdated": "le2999-01-01"}
    page = get(api, "/Patient", {**q, "_count": 1})
    pins: set[str] = set()
    for relation in ("next",) * 5 + ("previous",) * 5:
        url = link(page, relation)
        assert url is not None, relation
        moments = [v for k, v in httpx.URL(url).params.multi_items() if k == "_lastUpdated"]
        # the search's own `le2999-01-01` (a date, kept) and one instant: the first page's
        assert len(moments) == 2 and "le2999-01-01" in moments, moments
        pins.update(m for m in moments if m != "le2999-01-01")
        page = get(api, url)
    assert len(pins) == 1 and keys(page) == keys(get(api, "/Patient", {**q, "_count": 1}))
