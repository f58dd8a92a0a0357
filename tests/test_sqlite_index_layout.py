"""Migration 0015 (store/sqlite_index_layout.py): a SQLite database whose index was written in the layout of
schema 0014 is converted on start, and answers every kind of search as a database indexed in the new layout
from the start does."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from bench.search import population
from fhirvault.fhir.search_index import search_index
from fhirvault.store.database import Database
from fhirvault.store.driver_batch import run_batch
from fhirvault.store.migrations import STEPS, apply_steps
from fhirvault.store.resources import ResourceStore, StoredResource
from fhirvault.store.search_tables import INDEX_TABLES, index_statements
from fhirvault.store.version_access import access_statements
from tests.support.server import ServerProcess

BASE = "http://fhirvault.invalid/fhir/R4"
STEP_0015 = next(i for i, step in enumerate(STEPS) if step.id.startswith("0015_"))
# an Observation with a code both with and without system, and a two-component composite of a component
EXTRA: list[dict[str, Any]] = [
    {"resourceType": "Observation", "id": "two-codes", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}, {"code": "8867-4"}], "text": "Pulse"},
     "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-07-01T10:00:00Z",
     "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
     "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]},
]
SEARCHES: list[tuple[str, dict[str, str]]] = [
    ("/Patient", {"name": "garc", "_count": "100"}),
    ("/Patient", {"name:exact": "García", "_count": "100"}),
    ("/Patient", {"identifier": "urn:mrn|MRN0000010"}),
    ("/Patient", {"birthdate": "ge1990-01-01", "gender": "female", "_count": "100"}),
    ("/Observation", {"code": "http://loinc.org|29463-7", "date": "ge2020", "_count": "100"}),
    ("/Observation", {"code": "|8867-4"}),
    ("/Observation", {"status": "final", "_summary": "count"}),
    ("/Observation", {"value-quantity": "gt150", "_count": "100"}),
    ("/Observation", {"code-value-quantity": "8867-4$gt70", "_count": "100"}),
    ("/Observation", {"component-code-value-quantity": "8480-6$gt100"}),
    ("/Observation", {"patient": "Patient/p1", "_include": "Observation:subject"}),
    ("/Observation", {"subject:Patient.identifier": "urn:mrn|MRN0000003"}),
    ("/Encounter", {"class": "IMP", "_sort": "-date", "_count": "7"}),
    ("/Patient", {"_id": "p2", "_revinclude": "Observation:subject"}),
    ("/DocumentReference", {"contenttype": "application/pdf", "_count": "100"}),
    ("/Media", {"_content": "media1", "_count": "100"}),
    ("/Patient", {"_has:Observation:subject:code": "8867-4", "_count": "100"}),
]


async def _write(db_file: Path, steps: int, legacy: bool, items: list[dict[str, Any]]) -> None:
    """Apply the first `steps` migration steps, then store `items` with their index rows: as schema
    0014 wrote them (unnumbered) when `legacy`, else as the store writes them now."""
    db = Database(f"sqlite+aiosqlite:///{db_file}")
    store = ResourceStore()
    try:
        async with db.write() as conn:
            await apply_steps(conn, postgres=False, steps=STEPS[:steps])
        async with db.write() as conn:
            for r in items:
                rows = search_index(r, BASE)
                stored = StoredResource(r["resourceType"], r["id"], 1, 1, False, r)
                if not legacy:
                    await store.write(conn, stored, None, rows)
                    continue
                await store.write(conn, stored, None, None)
                access = {row for row in rows.refs if row[0].startswith("_")}
                await run_batch(conn, index_statements(r["resourceType"], r["id"], rows, new=True)
                                + access_statements(r["resourceType"], r["id"], 1, access))
    finally:
        await db.close()


def _ids(api: Any, path: str, params: dict[str, str]) -> tuple[Any, ...]:
    r = api.get(path, params=params)
    assert r.status_code == 200, (path, params, r.text)
    body = r.json()
    return body.get("total"), tuple((e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
                                    for e in body.get("entry", []))


def _layout(db_file: Path) -> dict[str, str]:
    with sqlite3.connect(db_file) as db:
        return {name: " ".join(sql.split()) for name, sql in db.execute(
            "select name, sql from sqlite_master where sql is not null and name not like 'sqlite_stat%'")}


def test_a_0014_database_is_converted_and_searches_alike(tmp_path: Path) -> None:
    items = population(400, seed=11) + EXTRA
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    asyncio.run(_write(old_dir / "fhirvault.db", STEP_0015, True, items))
    asyncio.run(_write(new_dir / "fhirvault.db", len(STEPS), False, items))
    with sqlite3.connect(old_dir / "fhirvault.db") as db:
        before = {t.name: sorted(db.execute(f"select * from {t.name}"), key=repr) for t in INDEX_TABLES}
        access_before = sorted(db.execute("select * from version_access"), key=repr)
    assert sum(len(rows) for rows in before.values()) > 4000

    old, new = ServerProcess(old_dir, {}).start(), ServerProcess(new_dir, {}).start()
    try:
        with old.api() as old_api, new.api() as new_api:
            for path, params in SEARCHES:
                found = _ids(old_api, path, params)
                assert found == _ids(new_api, path, params), (path, params)
                assert found[1] or found[0], (path, params)  # each search finds something
            # a converted resource's rows are replaced on update
            body = dict(EXTRA[0], status="amended")
            assert old_api.put("/Observation/two-codes", json=body).status_code == 200
            assert _ids(old_api, "/Observation", {"_id": "two-codes", "status": "final"})[1] == ()
            assert len(_ids(old_api, "/Observation", {"_id": "two-codes", "status": "amended"})[1]) == 1
    finally:
        old.stop()
        new.stop()

    assert _layout(old_dir / "fhirvault.db") == _layout(new_dir / "fhirvault.db")
    with sqlite3.connect(old_dir / "fhirvault.db") as db:
        assert [r[0] for r in db.execute("select name from schema_migrations order by rowid")][-1] == STEPS[-1].id
        for t in INDEX_TABLES:
            assert "WITHOUT ROWID" in db.execute("select sql from sqlite_master where name = ?",
                                                 (t.name,)).fetchone()[0], t.name
            columns = [c[1] for c in db.execute(f"pragma table_info({t.name})")]
            after = sorted((tuple(r[i] for i in range(len(columns)) if columns[i] != "n")
                            for r in db.execute(f"select * from {t.name}")
                            if not (r[0] == "Observation" and r[1] == "two-codes")), key=repr)
            kept = [r for r in before[t.name] if not (r[0] == "Observation" and r[1] == "two-codes")]
            assert after == kept, t.name
        access_after = [r for r in sorted(db.execute("select * from version_access"), key=repr) if r[2] == 1]
        assert access_after == access_before
