"""Parameters stored as the index rows of others (fhir/search_storage.py) answer as if they had their own:
over real HTTP on SQLite and PostgreSQL, and on a database migrated from rows written under their names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fhirvault.fhir.search_index import search_index
from fhirvault.fhir.search_storage import StoredAs, aliased_codes, stored_as
from fhirvault.store.database import Database
from fhirvault.store.driver_batch import run_batch
from fhirvault.store.migrations import STEPS, apply_steps
from fhirvault.store.resources import ResourceStore
from fhirvault.store.schema import resources
from fhirvault.store.search_sql import Criteria, ParamClause, RefTest, TokenTest
from fhirvault.store.search_tables import INDEX_TABLES, index_statements, search_refs, search_tokens
from tests.support.server import FhirApi, ServerProcess
from tests.test_rest_search_params import LOINC, create, found, obs, tag

BASE = "http://fhirvault.invalid/fhir/R4"


def test_which_parameters_share_rows() -> None:
    assert stored_as("Observation", "patient") == StoredAs(("subject",), "Patient")
    assert stored_as("Observation", "combo-code") == StoredAs(("code", "component-code"))
    assert stored_as("Observation", "combo-code:text") == StoredAs(("code:text", "component-code:text"))
    assert stored_as("Observation", "combo-code-value-quantity") == \
        StoredAs(("code-value-quantity", "component-code-value-quantity"))
    assert stored_as("Patient", "phonetic") == StoredAs(("name",))
    # a Reference with only an identifier has no target type: those rows stay the parameter's own
    assert stored_as("Observation", "patient:identifier") == StoredAs(("patient:identifier",))
    assert stored_as("AllergyIntolerance", "patient") == StoredAs(("patient",))  # its own path
    assert stored_as("Observation", "code") == StoredAs(("code",))
    rows = search_index({
        "resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "c"}], "text": "t"},
        "subject": {"reference": "Patient/1", "identifier": {"value": "x"}}, "valueQuantity": {"value": 1},
        "component": [{"code": {"coding": [{"code": "d"}]}, "valueQuantity": {"value": 2}}]}, BASE)
    written = {row[0] for kind in vars(rows).values() for row in kind}
    assert {"subject", "code", "component-code", "code:text", "patient:identifier"} <= written
    assert not written & set(aliased_codes("Observation")), written


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fresh_api(request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]) -> Iterator[FhirApi]:
    """A server of its own: these answers compare parameter semantics, and must not depend on how the
    planner treats the thousands of rows the suite's shared server has gathered by then (search speed
    over large data is bench/search.py's business)."""
    with server_factory(request.param).api() as client:
        yield client


def test_shared_rows_answer_like_own_rows(fresh_api: FhirApi) -> None:
    api = fresh_api
    t = tag()
    pat = create(api, {"resourceType": "Patient", "name": [{"family": f"Shared{t}"}]})
    group = create(api, {"resourceType": "Group", "type": "person", "actual": True})
    q = {"identifier": f"urn:test|{t}"}
    to_patient = create(api, obs(t, subject={"reference": f"Patient/{pat['id']}"},
                                 code={"coding": [{"system": LOINC, "code": f"A{t}"}]}))
    to_group = create(api, obs(t, subject={"reference": f"Group/{group['id']}"},
                               component=[{"code": {"coding": [{"system": LOINC, "code": f"B{t}"}]},
                                           "valueQuantity": {"value": 7, "system": "http://unitsofmeasure.org",
                                                             "code": "mg"}}]))
    by_ident = create(api, obs(t, subject={"identifier": {"system": "urn:ssn", "value": f"S{t}"}}))
    # patient = subject restricted to Patient targets
    assert found(api, "/Observation", {**q, "patient": pat["id"]}) == [to_patient["id"]]
    assert found(api, "/Observation", {**q, "patient:missing": "false"}) == [to_patient["id"]]
    assert found(api, "/Observation", {**q, "patient:missing": "true"}) == sorted([to_group["id"], by_ident["id"]])
    assert found(api, "/Observation", {**q, "subject:missing": "false"}) == sorted([to_patient["id"], to_group["id"]])
    assert found(api, "/Observation", {**q, "patient.family": f"shared{t}"}) == [to_patient["id"]]
    assert found(api, "/Patient", {"_has:Observation:patient:identifier": f"urn:test|{t}"}) == [pat["id"]]
    r = api.get("/Observation", params={**q, "_include": "Observation:patient"})
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in r.json()["entry"]
                if e["search"]["mode"] == "include"}
    assert included == {("Patient", pat["id"])}  # the Group is a subject, not a patient
    r = api.get("/Patient", params={"_id": pat["id"], "_revinclude": "Observation:patient"})
    assert {e["resource"]["id"] for e in r.json()["entry"] if e["search"]["mode"] == "include"} == \
        {to_patient["id"]}
    # combo-code = code | component-code; combo-value-quantity likewise; sorting reads them too
    assert found(api, "/Observation", {**q, "combo-code": f"{LOINC}|A{t},{LOINC}|B{t}"}) == \
        sorted([to_patient["id"], to_group["id"]])
    assert found(api, "/Observation", {**q, "combo-code:missing": "true"}) == [by_ident["id"]]  # text only
    assert found(api, "/Observation", {**q, "combo-value-quantity": "7||mg"}) == [to_group["id"]]
    assert found(api, "/Observation", {**q, "combo-code-value-quantity": f"{LOINC}|B{t}$7"}) == [to_group["id"]]
    r = api.get("/Observation", params={**q, "_sort": "-combo-code"})
    assert [e["resource"]["id"] for e in r.json()["entry"]][:2] == [to_group["id"], to_patient["id"]]
    # phonetic = name
    assert found(api, "/Patient", {"phonetic": f"shared{t}"}) == [pat["id"]]


async def _migrated(path: Path) -> dict[str, int]:
    """A database at 0008 whose Observation has rows under `patient` and `combo-code`, as before, then
    migrated: those rows are gone and the search still finds the Observation by them."""
    db = Database(f"sqlite+aiosqlite:///{path}")
    before = [s for s in STEPS if s.id < "0013"]
    async with db.write() as conn:
        await apply_steps(conn, postgres=False, steps=before)
    store = ResourceStore()
    body = {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "X"}]}, "subject": {"reference": "Patient/p1"}}
    async with db.write() as conn:
        # the resource and its rows as written before step 0014 (whose version access rows store.write adds)
        await conn.execute(sa.insert(resources).values(resource_type="Observation", id="o1", version_id=1,
                                                       last_updated=1, deleted=False, content=json.dumps(body)))
        await run_batch(conn, index_statements("Observation", "o1", search_index(body, BASE), new=True))
        # as the index wrote them before: own rows for the parameters now stored as others
        await conn.execute(sa.insert(search_refs).values(resource_type="Observation", id="o1", param="patient",
                                                         target="Patient/p1"))
        await conn.execute(sa.insert(search_tokens).values(resource_type="Observation", id="o1", param="combo-code",
                                                           system=LOINC, value="X"))
    async with db.write() as conn:
        # up to step 0014: 0015 changes SQLite's layout (tests/test_sqlite_index_layout.py)
        applied = await apply_steps(conn, postgres=False, steps=[s for s in STEPS if s.id < "0015"])
    assert "0013_search_index_lean" in applied
    async with db.read() as conn:
        counts = {}
        for table in INDEX_TABLES:
            rows = (await conn.execute(sa.select(table.c.param).where(table.c.id == "o1"))).scalars().all()
            counts.update({p: counts.get(p, 0) + 1 for p in rows})
        indexes = set((await conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index'"))).scalars())
        hits = {}
        for code, test in (("patient", RefTest(("Patient/p1",))), ("combo-code", TokenTest(LOINC, "X"))):
            kind = "reference" if code == "patient" else "token"
            found_rows = await store.search(conn, Criteria(["Observation"], [ParamClause(kind, code, [test])]))
            hits[code] = len(found_rows)
    await db.close()
    assert "ix_tokens_owner" not in indexes and "ix_refs_owner" not in indexes
    assert "ix_tokens_owner_param" in indexes
    assert hits == {"patient": 1, "combo-code": 1}
    return counts


def test_migration_drops_rows_of_parameters_stored_as_others(tmp_path: Path) -> None:
    counts = asyncio.run(_migrated(tmp_path / "db.sqlite"))
    assert "patient" not in counts and "combo-code" not in counts
    assert counts["subject"] == 1 and counts["code"] == 1
