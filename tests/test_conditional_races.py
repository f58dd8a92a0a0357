"""Racing conditional creates over real HTTP: many requests with one If-None-Exist (or one conditional
update with no match) released together, on SQLite with two server processes and on PostgreSQL with two
servers on one database. Exactly one creates; every other finds what it created (R4 http.html#ccreate)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.server import FhirApi, ServerProcess

RACERS = 24
SYSTEM = "urn:test:race"
FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def nodes(request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]) -> list[ServerProcess]:
    if request.param == "sqlite":
        # Two processes on one SQLite file: their writes meet at the database's write lock.
        return [server_factory("sqlite", workers=2)]
    first = server_factory("postgres")
    return [first, server_factory("postgres", database_url=first.env["FHIRVAULT_DATABASE_URL"],
                                  public_base_url=first.url)]


def race(nodes: list[ServerProcess], send: Callable[[FhirApi, int], httpx.Response]) -> list[httpx.Response]:
    headers = nodes[0].auth_headers()
    clients = [FhirApi(n.base, headers=headers, timeout=120, limits=httpx.Limits(max_connections=RACERS))
               for n in nodes]
    start = threading.Barrier(RACERS)

    def racer(i: int) -> httpx.Response:
        start.wait()
        return send(clients[i % len(clients)], i)

    try:
        with ThreadPoolExecutor(RACERS) as pool:
            return list(pool.map(racer, range(RACERS)))
    finally:
        for c in clients:
            c.close()


def found(nodes: list[ServerProcess], value: str) -> list[str]:
    with nodes[0].api() as api:
        bundle = api.get("/Patient", params={"identifier": f"{SYSTEM}|{value}", "_count": "100"}).json()
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Patient"]


def patient(value: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], **extra}


def one_created(answers: list[httpx.Response], nodes: list[ServerProcess], value: str) -> None:
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * (RACERS - 1) + [201], [a.text[:200] for a in answers if a.status_code not in (200, 201)]
    ids = found(nodes, value)
    assert len(ids) == 1
    assert {a.json()["id"] for a in answers} == set(ids)


def test_racing_if_none_exist_creates_once(nodes: list[ServerProcess]) -> None:
    value = f"v{time.time_ns()}"
    # The criteria spelled in different orders are one condition.
    criteria = [f"identifier={SYSTEM}|{value}&active=true", f"active=true&identifier={SYSTEM}|{value}"]
    answers = race(nodes, lambda api, i: api.post("/Patient", json=patient(value, active=True), headers={
        **FHIR, "If-None-Exist": criteria[i % 2]}))
    one_created(answers, nodes, value)


def test_racing_conditional_updates_with_no_match_create_once(nodes: list[ServerProcess]) -> None:
    value = f"v{time.time_ns()}"
    answers = race(nodes, lambda api, i: api.put(f"/Patient?identifier={SYSTEM}|{value}",
                                                 json=patient(value, gender="male"), headers=FHIR))
    assert sorted(a.status_code for a in answers) == [200] * (RACERS - 1) + [201]
    assert len(found(nodes, value)) == 1


def test_racing_transactions_with_if_none_exist_create_once(nodes: list[ServerProcess]) -> None:
    value, other = f"v{time.time_ns()}", f"w{time.time_ns()}"

    def send(api: FhirApi, i: int) -> httpx.Response:
        # Two conditional creates per transaction, in alternating order: no transaction waits on another
        # that waits on it.
        entries = [{"resource": patient(v), "request": {"method": "POST", "url": "Patient",
                                                        "ifNoneExist": f"identifier={SYSTEM}|{v}"}}
                   for v in ((value, other) if i % 2 else (other, value))]
        return api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, headers=FHIR)

    answers = race(nodes, send)
    assert all(a.status_code == 200 for a in answers), [a.text[:300] for a in answers if a.status_code != 200]
    assert len(found(nodes, value)) == 1 and len(found(nodes, other)) == 1
    created = [e for a in answers for e in a.json()["entry"] if e["response"]["status"].startswith("201")]
    assert len(created) == 2
