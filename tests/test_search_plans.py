"""The search queries of store/search_sql.py read the index tables through the indexes kept for them, on
SQLite and PostgreSQL, once the server has gathered the planner's statistics (Database.refresh_statistics),
also when the data grew by far after an earlier analysis (the statistics of a young database)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.search import population
from fhirvault.fhir.search_index import search_index
from fhirvault.service.search_parse import parse_search
from fhirvault.store.database import Database
from fhirvault.store.migrations import STEPS, apply_steps
from fhirvault.store.postgres_index_layout import owner_index
from fhirvault.store.resources import ResourceStore, StoredResource
from fhirvault.store.schema import resources
from fhirvault.store.search_sql import SortKey, after_sql, before_sql, criteria_sql, sort_columns, sort_terms
from fhirvault.store.search_tables import INDEX_TABLES
from tests.conftest import require_postgres
from tests.support.server import postgres_database

BASE = "http://fhirvault.invalid/fhir/R4"
# reference rows by owner: SQLite's owner-keyed table (store/sqlite_index_layout.py), PostgreSQL's owner
# index (store/postgres_index_layout.py)
OWNER_REFS = ("search_refs_1 USING PRIMARY KEY (resource_type=? AND id=?", owner_index("search_refs"))
# (type, query) -> the index its matches must be read from
SEARCHES = [
    ("Patient", [("identifier", "urn:mrn|MRN0000050")], "ix_tokens_lookup"),
    ("Observation", [("code", "http://loinc.org|29463-7"), ("date", "ge2024-06")], "ix_tokens_lookup"),
    ("Observation", [("patient", "Patient/p30")], "ix_refs_lookup"),
    # from the matching Patients to their references: by (type, param, target) or by target alone
    ("Observation", [("subject:Patient.identifier", "urn:mrn|MRN0000020")], ("ix_refs_lookup", "ix_refs_target")),
    ("DocumentReference", [("contenttype", "application/pdf"), ("patient", "p25")], "_lookup"),
    # a string's starts-with: the prefix's range of the lookup index (on PostgreSQL its pattern operators)
    ("Patient", [("name", "garc")], "ix_search_strings_lookup"),
    # chains through the shared `subject` rows of Observation `patient`, alone and after another criterion
    ("Observation", [("patient.identifier", "urn:mrn|MRN0000020")], ("ix_refs_lookup", "ix_refs_target")),
    ("Observation", [("code", "http://loinc.org|8867-4"), ("patient.identifier", "urn:mrn|MRN0000021")],
     ("ix_refs_lookup", "ix_refs_target", *OWNER_REFS)),
    # two levels: Observation -> Encounter -> Patient
    ("Observation", [("encounter.patient.identifier", "urn:mrn|MRN0000022")], ("ix_refs_lookup", "ix_refs_target")),
    # reverse chains, to a parameter with rows of its own and to one stored as `subject` rows
    ("Patient", [("_has:Encounter:patient:_id", "e40")], OWNER_REFS),
    ("Patient", [("_has:Observation:patient:_id", "o41")], OWNER_REFS),
]
# Patients written and analyzed first: the statistics a young database has (autovacuum, or the server's
# own refresh at start), by far out of date once the rest of the population is written.
EARLY = 150


async def _counted(db: Database, written: int) -> None:
    """Waits until PostgreSQL's shared statistics counters show the `written` resources (a backend
    reports its counts when it goes idle, at most once a second, so they may come a moment after the
    commit); refresh_statistics judges staleness by them."""
    if db.is_sqlite:
        return
    for _ in range(150):
        async with db.read() as conn:
            counted = (await conn.execute(sa.text(
                "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'resources'"))).scalar()
        if (counted or 0) >= written:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"PostgreSQL counted {counted} of {written} resources written")


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
    items = population(3000, seed=5)
    for batch in (items[:EARLY], items[EARLY:]):
        async with db.write() as conn:
            for r in batch:
                await store.write(conn, StoredResource(r["resourceType"], r["id"], 1, 1, False, r), None,
                                  search_index(r, BASE))
        await _counted(db, len(batch))
        if len(batch) == EARLY and not db.is_sqlite:
            async with db.write() as conn:
                await conn.execute(sa.text("ANALYZE"))  # as autovacuum does in a young database
        await db.refresh_statistics()  # as the server does at start and as the data grows
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
            if db.is_sqlite:
                rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)).all()
                out.append("\n".join(str(row[-1]) for row in rows))
            else:
                plan = (await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql)).scalar()
                out.append(json.dumps(plan if not isinstance(plan, str) else json.loads(plan)))
    await db.close()
    return out


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out += _nodes(child)
    for value in node.values():  # subplans of init and correlated subqueries are children too
        if isinstance(value, dict) and "Node Type" in value:
            out += _nodes(value)
    return out


def _check(plans: list[str], sqlite: bool) -> None:
    for (rtype, query, index), plan in zip(SEARCHES, plans, strict=True):
        assert any(i in plan for i in ((index,) if isinstance(index, str) else index)), f"{rtype}?{query}:\n{plan}"
        if sqlite:
            # from the matching ids to the resources by primary key, not a pass over every resource
            # (or by the resources' owner index of store/sqlite_index_layout.py, which starts with the key)
            by_key = r"(sqlite_autoindex_resources_1|ix_resources_owner_updated) \(resource_type=\? AND id=\?\)"
            assert re.search(r"SEARCH resources USING (COVERING )?INDEX " + by_key, plan), f"{rtype}?{query}:\n{plan}"
            continue
        if ("name", "garc") in query:
            assert "~>=~ 'garc'" in plan, f"{rtype}?{query}: the prefix is no index condition\n{plan}"
        nodes = _nodes(json.loads(plan)[0]["Plan"])
        for node in nodes:
            where = f"{rtype}?{query}: {node['Node Type']} on {node.get('Relation Name')}\n{plan}"
            # no table read whole, and no index read whole: each index is entered by its leading columns
            assert node["Node Type"] != "Seq Scan", where
            if node.get("Relation Name") == "resources":
                # a resource is read by its (type, id) key, never by scanning every resource of its type
                assert node.get("Index Name") == "resources_pkey", where
                assert "(id)::text = " in node.get("Index Cond", ""), where


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


async def _analyzed_after_writes(url: str) -> tuple[set[str], set[str]]:
    """Tables analyzed by a refresh after a bulk write, and those analyzed again by a second refresh."""
    db = Database(url)
    await db.migrate()
    store = ResourceStore()
    async with db.write() as conn:
        for r in population(600, seed=3):
            await store.write(conn, StoredResource(r["resourceType"], r["id"], 1, 1, False, r), None,
                              search_index(r, BASE))
    await _counted(db, 600)
    seen: list[dict[str, int]] = []
    for _ in range(2):
        await db.refresh_statistics()
        async with db.read() as conn:
            rows = (await conn.execute(sa.text("SELECT relname, analyze_count FROM pg_stat_user_tables"))).all()
        seen.append({name: count for name, count in rows if count})
    await db.close()
    return set(seen[0]), {name for name in seen[1] if seen[1][name] > seen[0].get(name, 0)}


def test_postgres_statistics_follow_the_writes() -> None:
    """The server analyzes the tables a bulk write changed (whatever autovacuum does), and only those."""
    require_postgres()
    with postgres_database() as url:
        first, second = asyncio.run(_analyzed_after_writes(url))
    assert {"resources", "search_strings", "search_tokens", "search_refs", "search_dates"} <= first, first
    assert "clients" not in first, first  # untouched tables are left alone
    assert not second, second  # nothing changed since: nothing analyzed again


async def _indexes_after_upgrade(url: str) -> dict[str, str]:
    """A PostgreSQL database at step 0014 upgraded to the current schema: its index tables' indexes."""
    db = Database(url)
    async with db.write() as conn:
        await apply_steps(conn, postgres=True, steps=[s for s in STEPS if s.id < "0015"])
    await db.migrate()
    async with db.read() as conn:
        rows = (await conn.execute(sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'search\\_%'"))).all()
    await db.close()
    return {name: definition for name, definition in rows}


def test_postgres_index_layout_after_upgrade() -> None:
    """Step 0016 on a database made before it: owner indexes on (type, id), prefix lookups by pattern."""
    require_postgres()
    with postgres_database() as url:
        indexes = asyncio.run(_indexes_after_upgrade(url))
    for table in INDEX_TABLES:
        assert indexes[owner_index(table.name)].endswith("(resource_type, id)"), indexes
    replaced = [n for n in indexes if n.endswith(("_owner", "_owner_param")) and not n.endswith("_by_owner")]
    assert not replaced, indexes
    assert "varchar_pattern_ops" in indexes["ix_search_strings_lookup"], indexes
    assert "varchar_pattern_ops" in indexes["ix_search_uris_lookup"], indexes


def test_postgres_reference_rows_have_one_value_index_after_upgrade() -> None:
    """Step 0017 on a database made before it: the reference rows' value index is led by the target and
    the target-only index is gone (store/postgres_index_layout.py)."""
    require_postgres()
    with postgres_database() as url:
        indexes = asyncio.run(_indexes_after_upgrade(url))
    assert indexes["ix_refs_lookup"].endswith("(target, resource_type, param)"), indexes
    assert "ix_refs_target" not in indexes, indexes
    refs = [n for n, d in indexes.items() if " ON public.search_refs " in d]
    assert sorted(refs) == ["ix_refs_lookup", owner_index("search_refs")], indexes


async def _keyset_plans(url: str) -> dict[str, str]:
    """The plans of a page after and a page before the middle resource of 1500 Observations in the default
    `_lastUpdated` order (ResourceStore.search with `after` / `before`), by direction."""
    db = Database(url)
    await db.migrate()
    store = ResourceStore()
    items = [r for r in population(3000, seed=5) if r["resourceType"] == "Observation"]
    async with db.write() as conn:
        for i, r in enumerate(items):
            await store.write(conn, StoredResource(r["resourceType"], r["id"], 1, 1_700_000_000_000_000 + i, False, r),
                              None, search_index(r, BASE))
    await _counted(db, len(items))
    await db.refresh_statistics()
    keys = [SortKey("_lastUpdated", "_lastUpdated")]
    terms = sort_terms(keys, resources, ["Observation"])
    middle = items[len(items) // 2]
    values = [1_700_000_000_000_000 + len(items) // 2, "Observation", middle["id"]]
    out = {}
    async with db.read() as conn:
        for name, condition, reverse in (("after", after_sql(terms, values), False),
                                         ("before", before_sql(terms, values), True)):
            stmt = (sa.select(resources.c.id).where(resources.c.resource_type == "Observation", condition)
                    .order_by(*sort_columns(keys, resources, ["Observation"], reverse=reverse)).limit(21))
            sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
            out[name] = "\n".join(str(row[-1]) for row in (await conn.exec_driver_sql(explain + sql)).all())
    await db.close()
    return out


def test_keyset_pages_start_from_the_cursor_in_both_directions(tmp_path: Path) -> None:
    """A `next` page (after_sql) and a `previous` page (before_sql) in `_lastUpdated` order enter the
    (type, last_updated) index at the cursor, forwards and backwards, rather than read the type's resources
    from its first one: the bound on the first key alone is an index condition, on SQLite and PostgreSQL."""
    plans = asyncio.run(_keyset_plans(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"))
    assert "USING INDEX ix_resources_type_updated (resource_type=? AND last_updated>?)" in plans["after"], plans
    assert "USING INDEX ix_resources_type_updated (resource_type=? AND last_updated<?)" in plans["before"], plans
    require_postgres()
    with postgres_database() as url:
        plans = asyncio.run(_keyset_plans(url))
    assert re.search(r"Index Scan using ix_resources_type_updated.*\n.*last_updated >= ", plans["after"]), plans
    assert re.search(r"Index Scan Backward using ix_resources_type_updated.*\n.*last_updated <= ", plans["before"]), \
        plans


def test_postgres_statistics_follow_a_young_database_within_seconds(tmp_path: Path) -> None:
    """A server started on an empty PostgreSQL database that takes a few hundred resources within its first
    minute, here in one transaction Bundle, analyzes them as they come (Database.statistics_due: every
    version counts), not at the next minute: planned from the empty database's statistics, a chained search
    nested loops over every Observation, reference and Patient and ran for over a minute on 368 resources.
    Over real HTTP: the tables are analyzed within seconds of the writes, and the chained search then
    answers at once."""
    import time

    import httpx

    from tests.support.server import ServerProcess, settings_env

    require_postgres()
    with postgres_database() as url:
        server = ServerProcess(tmp_path, settings_env(database_url=url), workers=1).start()
        try:
            with server.api(timeout=30) as api:
                started = time.time()
                # one transaction Bundle, as loads of several hundred resources come: each version counts
                entries: list[dict[str, Any]] = []
                for i in range(150):
                    entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "request": {
                        "method": "POST", "url": "Patient"}, "resource": {
                        "resourceType": "Patient", "active": i % 2 == 0,
                        "identifier": [{"system": "urn:young", "value": f"p{i}"}]}})
                    entries.append({"request": {"method": "POST", "url": "Observation"}, "resource": {
                        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
                        "identifier": [{"system": "urn:young", "value": f"o{i}"}],
                        "subject": {"reference": f"urn:uuid:00000000-0000-4000-8000-{i:012d}"}}})
                r = api.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
                assert r.status_code == 200, r.text[:2000]
                wrote = time.time() - started
                assert wrote < 50, f"the writes took {wrote:.0f} s: the minute's refresh could have run"

                async def analyzed() -> set[str]:
                    db = Database(url)
                    try:
                        async with db.read() as conn:
                            rows = (await conn.execute(sa.text(
                                "SELECT relname FROM pg_stat_user_tables WHERE greatest(last_analyze, "
                                "last_autoanalyze) > to_timestamp(:t)"), {"t": started})).scalars().all()
                    finally:
                        await db.close()
                    return set(rows)

                wanted = {"resources", "search_tokens", "search_refs"}
                deadline = time.monotonic() + 15
                while not wanted <= (seen := asyncio.run(analyzed())) and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert wanted <= seen, seen
                start = time.perf_counter()
                try:
                    r = api.get("/Observation", params={"identifier": "urn:young|o10",
                                                        "subject:Patient.active": "true"}, timeout=15)
                except httpx.TimeoutException:
                    raise AssertionError("the chained search ran for over 15 s") from None
                assert r.status_code == 200, r.text
                assert [e["resource"]["id"] for e in r.json()["entry"]] and time.perf_counter() - start < 15
        finally:
            server.stop()
