"""The search queries of store/search_sql.py read the index tables through the indexes kept for them, on
SQLite and PostgreSQL, once the planner has statistics (Database.refresh_statistics; autovacuum)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from bench.search import population
from fhirvault.fhir.search_index import search_index
from fhirvault.service.search_parse import parse_search
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore, StoredResource
from fhirvault.store.schema import resources
from fhirvault.store.search_sql import SortKey, criteria_sql, sort_columns
from tests.conftest import require_postgres
from tests.support.server import postgres_database

BASE = "http://fhirvault.invalid/fhir/R4"
# (type, query) -> the index its matches must be read from
SEARCHES = [
    ("Patient", [("identifier", "urn:mrn|MRN0000050")], "ix_tokens_lookup"),
    ("Observation", [("code", "http://loinc.org|29463-7"), ("date", "ge2024-06")], "ix_tokens_lookup"),
    ("Observation", [("patient", "Patient/p30")], "ix_refs_lookup"),
    # from the matching Patients to their references: by (type, param, target) or by target alone
    ("Observation", [("subject:Patient.identifier", "urn:mrn|MRN0000020")], ("ix_refs_lookup", "ix_refs_target")),
    ("DocumentReference", [("contenttype", "application/pdf"), ("patient", "p25")], "_lookup"),
]


async def _plans(url: str) -> list[str]:
    db = Database(url)
    await db.migrate()
    store = ResourceStore()
    async with db.write() as conn:
        for r in population(3000, seed=5):
            await store.write(conn, StoredResource(r["resourceType"], r["id"], 1, 1, False, r), None,
                              search_index(r, BASE))
    await db.refresh_statistics()
    if not db.is_sqlite:
        async with db.write() as conn:
            await conn.execute(sa.text("ANALYZE"))  # what autovacuum does after a bulk load
    out = []
    async with db.read() as conn:
        for rtype, query, _index in SEARCHES:
            parsed = parse_search([rtype], query, BASE, strict=True)
            stmt = (sa.select(resources.c.id).where(*criteria_sql(parsed.criteria, resources))
                    .order_by(*sort_columns([SortKey("_lastUpdated", "_lastUpdated")], resources, [rtype]))
                    .limit(20))
            sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
            rows = (await conn.exec_driver_sql(explain + sql)).all()
            out.append("\n".join(str(row[-1]) for row in rows))
    await db.close()
    return out


def _check(plans: list[str], sqlite: bool) -> None:
    for (rtype, query, index), plan in zip(SEARCHES, plans, strict=True):
        assert any(i in plan for i in ((index,) if isinstance(index, str) else index)), f"{rtype}?{query}:\n{plan}"
        if sqlite:
            # from the matching ids to the resources by primary key, not a pass over every resource
            assert "SEARCH resources USING INDEX sqlite_autoindex_resources_1" in plan, f"{rtype}?{query}:\n{plan}"
        else:
            assert "Seq Scan on resources" not in plan, f"{rtype}?{query}:\n{plan}"


def test_sqlite_searches_use_the_lookup_indexes(tmp_path: Path) -> None:
    _check(asyncio.run(_plans(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")), sqlite=True)


def test_postgres_searches_use_the_lookup_indexes() -> None:
    require_postgres()
    with postgres_database() as url:
        _check(asyncio.run(_plans(url)), sqlite=False)
