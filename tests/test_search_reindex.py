"""Rebuilding the search index of stored resources: batched, and resumed where a crash left it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from fhirvault.service.reindex import Reindexer
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore, StoredResource
from fhirvault.store.search_tables import search_reindex, search_strings
from fhirvault.store.version_access import version_access
from tests.conftest import require_postgres
from tests.support.server import postgres_database

BASE = "http://fhirvault.invalid/fhir/R4"


class Crash(Exception):
    pass


async def _scenario(path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    store = ResourceStore()
    async with db.write() as conn:
        for i in range(5):
            body = {"resourceType": "Patient", "id": f"p{i}", "name": [{"family": f"Family{i}"}]}
            # as a release without the search index stored them: no index rows
            await store.write(conn, StoredResource("Patient", f"p{i}", 1, 1, False, body), None, None)
    reindexer = Reindexer(db, BASE)
    assert await reindexer.mark() == ["Patient"]

    def crash_after_first_batch(rtype: str, n: int) -> None:
        raise Crash(f"{rtype}: {n}")

    try:
        await reindexer.run(batch=2, progress=crash_after_first_batch)
        raise AssertionError("the crash did not happen")
    except Crash:
        pass
    async with db.read() as conn:
        state = (await conn.execute(sa.select(search_reindex))).all()
        names = set((await conn.execute(sa.select(search_strings.c.exact).where(
            search_strings.c.param == "family"))).scalars())
    assert [(r.resource_type, r.after_id) for r in state] == [("Patient", "p1")]  # the first batch committed
    assert names == {"Family0", "Family1"}
    assert await reindexer.pending()
    assert await reindexer.run(batch=2) == 3  # resumes after p1
    async with db.read() as conn:
        names = set((await conn.execute(sa.select(search_strings.c.exact).where(
            search_strings.c.param == "family"))).scalars())
    assert names == {f"Family{i}" for i in range(5)}
    assert not await reindexer.pending()
    await db.close()


def test_reindex_is_batched_and_resumes_after_a_crash(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path / "db.sqlite"))


async def _nul_scenario(url: str) -> None:
    db = Database(url)
    await db.migrate()
    async with db.write() as conn:
        body = {"resourceType": "Patient", "id": "nul", "name": [{"family": "Null\x00Byte"}],
                "identifier": [{"system": "urn:x", "value": "a\x00b"}]}
        await ResourceStore().write(conn, StoredResource("Patient", "nul", 1, 1, False, body), None, None)
    reindexer = Reindexer(db, BASE)
    await reindexer.mark()
    assert await reindexer.run(batch=10) == 1
    async with db.read() as conn:
        names = set((await conn.execute(sa.select(search_strings.c.exact).where(
            search_strings.c.param == "family"))).scalars())
    assert names == {"Null\ufffdByte"}
    await db.close()


def test_reindex_keeps_going_past_a_nul_an_earlier_release_stored() -> None:
    """A NUL character in a stored resource (earlier releases accepted one) is indexed as U+FFFD: on
    PostgreSQL, whose text refuses NUL, the startup reindex used to fail and the server not start."""
    require_postgres()
    with postgres_database() as url:
        asyncio.run(_nul_scenario(url))


async def _versions_scenario(path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    store = ResourceStore()
    async with db.write() as conn:
        for version, patient in ((1, "a"), (2, "b")):
            body = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
                    "subject": {"reference": f"Patient/{patient}"}}
            # as a release before version access rows stored them: no rows
            await store.write(conn, StoredResource("Observation", "o", version, version, False, body),
                              None if version == 1 else 1, None)
        await store.write(conn, StoredResource("Observation", "o", 3, 3, True, None), 2, None)
    reindexer = Reindexer(db, BASE)
    await reindexer.mark()
    assert await reindexer.run() == 1
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(version_access.c.version_id, version_access.c.param,
                                             version_access.c.target))).all()
    # every version's own compartment; the deletion has none (the version before it speaks for it)
    assert sorted(tuple(r) for r in rows) == [(1, "_compartment", "Patient/a"), (2, "_compartment", "Patient/b")]
    await db.close()


def test_reindex_computes_the_access_rows_of_every_stored_version(tmp_path: Path) -> None:
    asyncio.run(_versions_scenario(tmp_path / "db.sqlite"))
