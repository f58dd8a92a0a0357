"""The search queries of store/search_sql.py read the index tables through the indexes kept for them, on
SQLite and PostgreSQL, once the planner has statistics (Database.refresh_statistics; autovacuum)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

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


# SQLite (store/sqlite_index_layout.py): unselective searches, each with what its plan must hold
SQLITE_SEARCHES = [
    # both value tests read from covering indexes, the candidates' flags and dates from the resources' owner index
    ("Observation", [("code", "2339-0"), ("value-quantity", "gt190")],
     ("COVERING INDEX ix_tokens_lookup", "COVERING INDEX ix_search_quantities_lookup",
      "COVERING INDEX ix_resources_owner_updated")),
    ("Observation", [("code", "http://loinc.org|29463-7"), ("date", "ge2024-06")],
     ("COVERING INDEX ix_tokens_lookup", "COVERING INDEX ix_search_dates_lookup")),
    # the sort key: one lookup per candidate, in the owner-keyed table
    ("Encounter", [("class", "IMP"), ("_sort", "-date"), ("_count", "10")],
     ("COVERING INDEX ix_tokens_lookup", "search_dates_1 USING PRIMARY KEY (resource_type=? AND id=? AND param=?)")),
    ("Patient", [("name", "garc")], ("COVERING INDEX ix_search_strings_lookup",)),
    ("Observation", [("patient", "Patient/p30"), ("code", "8867-4")],
     ("COVERING INDEX ix_refs_lookup", "COVERING INDEX ix_tokens_lookup")),
]


async def _plans(url: str, searches: list[tuple[str, list[tuple[str, str]], Any]] = SEARCHES,
                 count: bool = False) -> list[str]:
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
        for rtype, query, _index in searches:
            parsed = parse_search([rtype], query, BASE, strict=True)
            if count:
                stmt = sa.select(sa.func.count()).select_from(resources).where(
                    *criteria_sql(parsed.criteria, resources))
            else:
                keys = parsed.sort or [SortKey("_lastUpdated", "_lastUpdated")]
                stmt = (sa.select(resources.c.id).where(*criteria_sql(parsed.criteria, resources))
                        .order_by(*sort_columns(keys, resources, [rtype])).limit(20))
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
            # (or by the resources' owner index of store/sqlite_index_layout.py, which starts with the key)
            by_key = r"(sqlite_autoindex_resources_1|ix_resources_owner_updated) \(resource_type=\? AND id=\?\)"
            assert re.search(r"SEARCH resources USING (COVERING )?INDEX " + by_key, plan), f"{rtype}?{query}:\n{plan}"
        else:
            assert "Seq Scan on resources" not in plan, f"{rtype}?{query}:\n{plan}"


def test_sqlite_searches_use_the_lookup_indexes(tmp_path: Path) -> None:
    _check(asyncio.run(_plans(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")), sqlite=True)


def test_sqlite_unselective_searches_read_indexes_only(tmp_path: Path) -> None:
    """On SQLite the index subqueries of searches that match thousands of rows read covering indexes (no
    index table row, no resource row per candidate), a sort key is looked up once per candidate, and a
    count reads no resource row at all."""
    url = f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"
    plans = asyncio.run(_plans(url, SQLITE_SEARCHES))
    for (rtype, query, wanted), plan in zip(SQLITE_SEARCHES, plans, strict=True):
        for part in wanted:
            assert part in plan, f"{rtype}?{query}: {part}\n{plan}"
        assert plan.count("CORRELATED SCALAR SUBQUERY") <= 1, f"{rtype}?{query}:\n{plan}"
        assert "SCAN" not in plan, f"{rtype}?{query}:\n{plan}"
    counts = asyncio.run(_plans(f"sqlite+aiosqlite:///{tmp_path}/count.sqlite", SQLITE_SEARCHES[:1], count=True))
    assert "SEARCH resources USING COVERING INDEX ix_resources_owner_updated" in counts[0], counts[0]


def test_postgres_searches_use_the_lookup_indexes() -> None:
    require_postgres()
    with postgres_database() as url:
        _check(asyncio.run(_plans(url)), sqlite=False)
