"""Every schema migration step, in the one order in which they are applied, and the code that applies them.

Rules: the list is append-only; a released step is never edited; ids are unique and their number
prefix matches their position. Each applied id is recorded in `schema_migrations`, so a step runs
once per database whatever entry point (server, worker, CLI command) starts first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.clock import now_us
from fhirvault.store.blobs import blob_chunks, blobs
from fhirvault.store.direct_uploads import direct_uploads
from fhirvault.store.job_rows import jobs
from fhirvault.store.postgres_index_layout import postgres_index_layout_0016, postgres_refs_by_target_0017
from fhirvault.store.scan_rows import content_refs, content_scans
from fhirvault.store.schema import (
    metadata,
    resource_versions,
    resources,
    schema_migrations,
    search_refs,
    search_tokens,
)
from fhirvault.store.search_tables import add_search_tables_0014, create_search_tables, lean_search_index
from fhirvault.store.security import auth_failures, clients, signing_keys
from fhirvault.store.sqlite_index_layout import sqlite_index_layout_0015, sqlite_owner_index_versions_0018
from fhirvault.store.uploads import uploads
from fhirvault.store.url_signing_keys import insert_key, new_key, url_signing_keys

# Any fixed number: the PostgreSQL advisory lock that serializes concurrent starts of several nodes.
PG_MIGRATION_LOCK = 7262011


@dataclass(frozen=True)
class MigrationStep:
    """One schema change. `id` is recorded once applied; `formerly` lists ids under which an earlier
    release recorded the same step (a database that has one of them has this step)."""

    id: str
    apply: Callable[[AsyncConnection], Awaitable[None]]
    formerly: tuple[str, ...] = ()


def _create(*tables: sa.Table) -> Callable[[AsyncConnection], Awaitable[None]]:
    async def create(conn: AsyncConnection) -> None:
        await conn.run_sync(lambda sync: metadata.create_all(sync, tables=list(tables)))

    return create


def _execute(statement: str) -> Callable[[AsyncConnection], Awaitable[None]]:
    async def execute(conn: AsyncConnection) -> None:
        await conn.execute(sa.text(statement))

    return execute


async def _create_url_signing_keys(conn: AsyncConnection) -> None:
    await _create(url_signing_keys)(conn)
    # The first key is made here, under the migration lock, so that nodes starting together share it.
    await insert_key(conn, new_key(now_us()))


async def _blob_references(conn: AsyncConnection) -> None:
    """Content deduplication: each blob counts the versions referring to it (`refs`, counted now from
    resource_versions), and one committed blob per content (the smallest id) gets the content key that later
    equal uploads share; copies stored before keep their bytes (and their own row) until expunged."""
    columns = await conn.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("blobs")})
    if "refs" not in columns:  # a database made by 0003 before these columns were part of the table
        await conn.execute(sa.text("ALTER TABLE blobs ADD COLUMN refs INTEGER DEFAULT '0' NOT NULL"))
    if "content_key" not in columns:
        await conn.execute(sa.text("ALTER TABLE blobs ADD COLUMN content_key VARCHAR(96)"))
    # Counted once by grouping into an indexed scratch table: resource_versions has no index on blob_id,
    # and a count per blob would scan all versions once per blob.
    await conn.execute(sa.text("DROP TABLE IF EXISTS blob_refs_0009"))
    await conn.execute(sa.text(
        "CREATE TABLE blob_refs_0009 AS SELECT blob_id, count(*) AS n FROM resource_versions "
        "WHERE blob_id IS NOT NULL GROUP BY blob_id"))
    await conn.execute(sa.text("CREATE UNIQUE INDEX ux_blob_refs_0009 ON blob_refs_0009 (blob_id)"))
    await conn.execute(sa.text(
        "UPDATE blobs SET refs = coalesce((SELECT c.n FROM blob_refs_0009 c WHERE c.blob_id = blobs.id), 0)"))
    await conn.execute(sa.text("DROP TABLE blob_refs_0009"))
    await conn.execute(sa.text(
        "UPDATE blobs SET content_key = sha256 || ':' || CAST(size AS VARCHAR(24)) "
        "WHERE content_key IS NULL AND id IN (SELECT min(b.id) FROM blobs b WHERE b.state = 'committed' "
        "AND b.sha256 IS NOT NULL AND b.size IS NOT NULL GROUP BY b.sha256, b.size)"))
    await conn.execute(sa.text("CREATE UNIQUE INDEX IF NOT EXISTS ux_blobs_content_key ON blobs (content_key)"))


STEPS: tuple[MigrationStep, ...] = (
    MigrationStep("0001_resources", _create(resources, resource_versions, search_tokens, search_refs)),
    MigrationStep("0002_security", _create(clients, signing_keys)),
    # Release 0.1 recorded these two under the names their modules registered on import.
    MigrationStep("0003_blobs", _create(blobs, blob_chunks), formerly=("0002_blobs",)),
    MigrationStep("0004_url_signing_keys", _create_url_signing_keys),
    MigrationStep("0005_jobs", _create(jobs), formerly=("0010_jobs",)),
    MigrationStep("0006_auth_failures", _create(auth_failures)),
    MigrationStep("0007_blobs_storage_key_index", _execute(
        "CREATE INDEX IF NOT EXISTS ix_blobs_storage_key ON blobs (storage_key)")),
    # Typed search index tables; every stored type is marked for a resumable rebuild of its index.
    MigrationStep("0008_search_index", create_search_tables),
    MigrationStep("0009_blob_references", _blob_references),
    # Malware scan verdicts by content (SHA-256), and which resource versions hold each content.
    MigrationStep("0010_content_scans", _create(content_scans, content_refs)),
    # Resumable (tus) uploads: their offsets survive restarts and are shared by every node.
    MigrationStep("0011_uploads", _create(uploads)),
    # Uploads straight to the object store (Binary/$upload-url), each owning a pending blob.
    MigrationStep("0012_direct_uploads", _create(direct_uploads)),
    # Parameters stored as the rows of others lose their own rows; two redundant indexes go.
    MigrationStep("0013_search_index_lean", lean_search_index),
    # Composites of 3+ components, version access rows, reference targets; every type reindexed for them,
    # _text, _content and Location near.
    MigrationStep("0014_search_semantics", add_search_tables_0014),
    # SQLite: index tables keyed by owner (WITHOUT ROWID) with one covering lookup index each
    # (store/sqlite_index_layout.py); nothing on PostgreSQL.
    MigrationStep("0015_sqlite_index_layout", sqlite_index_layout_0015),
    # PostgreSQL: owner indexes on (type, id), prefix lookups with pattern operators
    # (store/postgres_index_layout.py); nothing on SQLite.
    MigrationStep("0016_postgres_index_layout", postgres_index_layout_0016),
    # PostgreSQL: one value index of reference rows, led by the target (store/postgres_index_layout.py);
    # nothing on SQLite.
    MigrationStep("0017_postgres_refs_by_target", postgres_refs_by_target_0017),
    # SQLite: the resources' owner index holds version_id too (store/sqlite_index_layout.py); nothing on
    # PostgreSQL.
    MigrationStep("0018_sqlite_owner_index_versions", sqlite_owner_index_versions_0018),
)


async def apply_steps(conn: AsyncConnection, *, postgres: bool,
                      steps: Sequence[MigrationStep] = STEPS) -> list[str]:
    """Apply, inside the caller's write transaction `conn`, every step of `steps` (in order) whose id
    (or a former id) is not yet recorded; records each new id and renames former ids to current ones.
    Returns the ids applied now (empty when the schema was already current). Never drops data."""
    if postgres:
        await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})"))
    await conn.run_sync(lambda sync: schema_migrations.create(sync, checkfirst=True))
    recorded = set((await conn.execute(sa.select(schema_migrations.c.name))).scalars())
    applied_now: list[str] = []
    for step in steps:
        if step.id in recorded:
            continue
        former = [name for name in step.formerly if name in recorded]
        if former:
            await conn.execute(sa.update(schema_migrations).where(schema_migrations.c.name == former[0])
                               .values(name=step.id))
            continue
        await step.apply(conn)
        await conn.execute(sa.insert(schema_migrations).values(name=step.id, applied_at=now_us()))
        applied_now.append(step.id)
    return applied_now


def schema_version(steps: Sequence[MigrationStep] = STEPS) -> int:
    """The schema version a database has once `steps` are applied: the number of the last step."""
    return int(steps[-1].id.split("_", 1)[0])
