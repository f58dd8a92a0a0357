"""The blob registry's dedup decision and reference counts under interleaved PostgreSQL transactions (READ
COMMITTED, as the server runs them): the database, not a check-then-act in Python, decides between two
identical uploads, and between an expunge releasing the last reference and an upload taking a new one.
The HTTP-level races are in tests/test_dedup.py; here each interleaving is forced step by step."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from fhirvault.store.blobs import COMMITTED, RELEASED, BlobRegistry, ContentRace
from fhirvault.store.database import Database
from fhirvault.store.migrations import STEPS, apply_steps
from tests.conftest import require_postgres
from tests.support.server import postgres_database

SHA = hashlib.sha256(b"same content").hexdigest()
SHA1 = "c2FtZQ=="


async def _pending(db: Database, registry: BlobRegistry, *ids: str) -> None:
    async with db.write() as conn:
        for blob_id in ids:
            await registry.add_pending(conn, blob_id, "filesystem", blob_id, created=1)


async def _blocked(db: Database, task: asyncio.Task[object]) -> None:
    """Wait until `task`'s statement waits for a lock another transaction holds (seen in pg_stat_activity),
    so the interleaving is the one the test means and not whatever the scheduler chose."""
    for _ in range(600):
        assert not task.done(), "the statement did not wait for the other transaction"
        async with db.engine.connect() as conn:
            waiting = (await conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))).scalar()
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the statement never waited for the lock")


@pytest.fixture
def pg_url() -> object:
    require_postgres()
    with postgres_database() as url:
        yield url


def test_two_identical_commits_one_wins_the_other_refers_to_it(pg_url: str) -> None:
    async def scenario() -> None:
        db = Database(pg_url)
        await db.migrate()
        registry = BlobRegistry()
        try:
            await _pending(db, registry, "p1", "p2")
            async with db.engine.connect() as one, db.engine.connect() as two:
                first, second = await one.begin(), await two.begin()
                assert await registry.settle(one, "p1", 12, SHA, SHA1, dedup=True) == "p1"
                # p2 finds no committed blob yet (p1's transaction is open) and tries to commit its own:
                # the unique index makes it wait for p1's transaction, then refuses it.
                racing = asyncio.create_task(registry.settle(two, "p2", 12, SHA, SHA1, dedup=True))
                await _blocked(db, racing)
                await first.commit()
                with pytest.raises(ContentRace):
                    await racing
                await second.rollback()
            # the retry refers to the winner and releases its own copy
            async with db.write() as conn:
                assert await registry.settle(conn, "p2", 12, SHA, SHA1, dedup=True) == "p1"
                await registry.add_reference(conn, "p1")
            async with db.read() as conn:
                p1, p2 = await registry.get(conn, "p1"), await registry.get(conn, "p2")
            assert p1 is not None and (p1.state, p1.refs) == (COMMITTED, 1)
            assert p2 is not None and p2.state == RELEASED
        finally:
            await db.close()

    asyncio.run(scenario())


def test_expunge_of_the_last_reference_and_a_new_reference_are_ordered_by_the_row(pg_url: str) -> None:
    async def scenario() -> None:
        db = Database(pg_url)
        await db.migrate()
        registry = BlobRegistry()
        try:
            await _pending(db, registry, "shared", "other")
            async with db.write() as conn:
                assert await registry.settle(conn, "shared", 12, SHA, SHA1, dedup=True) == "shared"
                await registry.add_reference(conn, "shared")
            # 1. the upload takes its reference first: the expunge waits, then sees refs 1 and keeps the blob
            async with db.engine.connect() as up, db.engine.connect() as ex:
                upload, expunge = await up.begin(), await ex.begin()
                await registry.add_reference(up, "shared")
                dropping = asyncio.create_task(registry.drop_references(ex, {"shared": 1}))
                await _blocked(db, dropping)
                await upload.commit()
                assert await dropping == []
                await expunge.commit()
            async with db.read() as conn:
                record = await registry.get(conn, "shared")
            assert record is not None and (record.state, record.refs) == (COMMITTED, 1)
            # 2. the expunge releases the last reference first: the upload waits, then is told to retry
            async with db.engine.connect() as up, db.engine.connect() as ex:
                upload, expunge = await up.begin(), await ex.begin()
                released = await registry.drop_references(ex, {"shared": 1})
                assert [r.id for r in released] == ["shared"]
                adding = asyncio.create_task(registry.add_reference(up, "shared"))
                await _blocked(db, adding)
                await expunge.commit()
                with pytest.raises(ContentRace):
                    await adding
                await upload.rollback()
            # ... and its retry finds no committed blob with that content: it commits its own copy
            async with db.write() as conn:
                assert await registry.settle(conn, "other", 12, SHA, SHA1, dedup=True) == "other"
        finally:
            await db.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrade_counts_the_references_of_blobs_stored_before(backend: str, tmp_path: Path) -> None:
    """Migration 0009 on a database of the release before it: each blob's refs are the versions referring
    to it, and one committed blob per content (the smallest id) becomes the one later uploads share."""
    async def scenario(url: str) -> None:
        db = Database(url)
        try:
            async with db.write() as conn:
                await apply_steps(conn, postgres=not db.is_sqlite, steps=STEPS[:8])
                # the blobs table as it was before 0009
                for statement in ("DROP INDEX ux_blobs_content_key", "ALTER TABLE blobs DROP COLUMN content_key",
                                  "ALTER TABLE blobs DROP COLUMN refs"):
                    await conn.execute(sa.text(statement))
                for blob_id, state, sha in (("a", "committed", SHA), ("b", "committed", SHA),
                                            ("c", "committed", "0" * 64), ("d", "pending", None)):
                    await conn.execute(sa.text(
                        "INSERT INTO blobs (id, state, backend, storage_key, size, sha256, sha1, created) "
                        "VALUES (:id, :state, 'filesystem', :id, :size, :sha, NULL, 1)"),
                        {"id": blob_id, "state": state, "sha": sha, "size": 12 if sha else None})
                for rid, version, blob_id in (("1", 1, "b"), ("1", 2, "b"), ("2", 1, "a"), ("3", 1, "c"),
                                              ("3", 2, None)):
                    await conn.execute(sa.text(
                        "INSERT INTO resource_versions (resource_type, id, version_id, last_updated, method, "
                        "deleted, content, blob_id) VALUES ('Binary', :id, :v, 1, 'PUT', :deleted, '{}', :blob)"),
                        {"id": rid, "v": version, "blob": blob_id, "deleted": False})
            await db.migrate()
            async with db.read() as conn:
                rows = {r.id: (r.refs, r.content_key) for r in (await conn.execute(sa.text(
                    "SELECT id, refs, content_key FROM blobs"))).all()}
            assert rows == {"a": (1, f"{SHA}:12"), "b": (2, None), "c": (1, f"{'0' * 64}:12"), "d": (0, None)}
            # and the upgraded table takes part in deduplication at once
            registry = BlobRegistry()
            await _pending(db, registry, "e")
            async with db.write() as conn:
                assert await registry.settle(conn, "e", 12, SHA, SHA1, dedup=True) == "a"
        finally:
            await db.close()

    if backend == "postgres":
        require_postgres()
        with postgres_database() as url:
            asyncio.run(scenario(url))
    else:
        asyncio.run(scenario(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"))
