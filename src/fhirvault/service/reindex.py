"""Rebuilding the search index of stored resources: in batches, resumable after a crash."""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.fhir.search_index import access_refs, search_index
from fhirvault.store.database import Database
from fhirvault.store.resources import row_to_stored
from fhirvault.store.schema import resource_versions, resources
from fhirvault.store.search_tables import search_reindex, write_index
from fhirvault.store.version_access import version_access, write_version_access

log = logging.getLogger("fhirvault.reindex")
BATCH = 500


class Reindexer:
    """Works through the `search_reindex` table: one row per resource type still to do, holding the last
    id done, so that a crash resumes where the last committed batch ended. Migration 0008 marks every
    stored type; `mark` marks more (the `fhirvault reindex [TYPE]` command)."""

    def __init__(self, db: Database, base_url: str, text: bool = True) -> None:
        self.db = db
        self.base_url = base_url  # absolute references on this base are indexed as relative ones
        self.text = text  # with the word rows of `_text` and `_content` (SEARCH_TEXT_INDEX)

    async def mark(self, rtype: str | None = None) -> list[str]:
        """Mark `rtype` (None: every stored type) for a rebuild from the start; returns the types marked."""
        async with self.db.write() as conn:
            if rtype is None:
                types = list((await conn.execute(sa.select(resources.c.resource_type).distinct())).scalars())
            else:
                types = [rtype]
            for t in types:
                await conn.execute(sa.delete(search_reindex).where(search_reindex.c.resource_type == t))
                await conn.execute(sa.insert(search_reindex).values(resource_type=t, after_id=""))
        return types

    async def _version_access(self, conn: AsyncConnection, rtype: str, ids: list[str]) -> None:
        """The access rows of every version of `ids` (history's rules in SQL), computed again."""
        if not ids:
            return
        v = resource_versions
        versions = (await conn.execute(sa.select(v).where(v.c.resource_type == rtype, v.c.id.in_(ids)))).all()
        await conn.execute(sa.delete(version_access).where(version_access.c.resource_type == rtype,
                                                           version_access.c.id.in_(ids)))
        for row in versions:
            stored = row_to_stored(row)
            if stored.content is not None and not stored.deleted:
                await write_version_access(conn, rtype, stored.id, stored.version_id,
                                           access_refs(stored.content, self.base_url))

    async def pending(self) -> bool:
        """Whether some resource type is still marked for an index rebuild."""
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(search_reindex.c.resource_type).limit(1))).first() is not None

    async def run(self, batch: int = BATCH, progress: Callable[[str, int], None] | None = None) -> int:
        """Rebuild every marked type, `batch` resources per transaction; returns how many were indexed."""
        done = 0
        while True:
            async with self.db.write() as conn:
                row = (await conn.execute(
                    sa.select(search_reindex).order_by(search_reindex.c.resource_type).limit(1))).first()
                if row is None:
                    return done
                rtype, after = row.resource_type, row.after_id
                t = resources
                rows = (await conn.execute(
                    sa.select(t).where(t.c.resource_type == rtype, t.c.id > after).order_by(t.c.id).limit(batch)
                )).all()
                for r in rows:
                    stored = row_to_stored(r)
                    index = None if stored.deleted or stored.content is None else search_index(
                        stored.content, self.base_url, self.text)
                    await write_index(conn, rtype, stored.id, index)
                await self._version_access(conn, rtype, [r.id for r in rows])
                where = search_reindex.c.resource_type == rtype
                if len(rows) < batch:
                    await conn.execute(sa.delete(search_reindex).where(where))
                else:
                    await conn.execute(sa.update(search_reindex).where(where).values(after_id=rows[-1].id))
            done += len(rows)
            if progress is not None:
                progress(rtype, len(rows))
            log.info("search index: %d %s resources reindexed", len(rows), rtype)
