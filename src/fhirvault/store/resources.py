"""Resource rows: current state, version history and search indexes, always written together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.fhir.indexing import COMPARTMENT, RefEntry, TokenEntry
from fhirvault.store.schema import resource_versions, resources, search_refs, search_tokens


class VersionConflict(Exception):
    """Another writer changed the resource between our read and our write; the caller retries."""


@dataclass
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: int  # microseconds since the epoch
    deleted: bool
    content: dict[str, Any] | None
    blob_id: str | None = None
    method: str = "PUT"


@dataclass
class TokenFilter:
    param: str
    alternatives: list[tuple[str | None, str | None]]  # (system, value); None = any


@dataclass
class RefFilter:
    param: str
    targets: list[str]


@dataclass
class SearchQuery:
    resource_type: str
    ids: list[str] | None = None
    updated: list[tuple[str, int, int]] = field(default_factory=list)  # (prefix, start_us, end_us)
    tokens: list[TokenFilter] = field(default_factory=list)
    refs: list[RefFilter] = field(default_factory=list)
    sort_desc: bool | None = None  # None: stable default order
    count: int = 20
    offset: int = 0


def _row_to_stored(row: Any, method: str | None = None) -> StoredResource:
    content = jsoncodec.loads(row.content) if row.content is not None else None
    return StoredResource(
        resource_type=row.resource_type, id=row.id, version_id=row.version_id,
        last_updated=row.last_updated, deleted=bool(row.deleted), content=content,
        blob_id=row.blob_id, method=method or str(getattr(row, "method", "PUT")),
    )


class ResourceStore:
    """SQL access for resources; every method runs inside a transaction the caller owns."""

    async def get(self, conn: AsyncConnection, rtype: str, rid: str, for_update: bool = False
                  ) -> StoredResource | None:
        """The current row; `for_update` locks it (PostgreSQL) so that concurrent writers queue."""
        t = resources
        stmt = sa.select(t).where(t.c.resource_type == rtype, t.c.id == rid)
        if for_update:
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        return _row_to_stored(row) if row else None

    async def get_version(self, conn: AsyncConnection, rtype: str, rid: str, vid: int) -> StoredResource | None:
        t = resource_versions
        row = (await conn.execute(
            sa.select(t).where(t.c.resource_type == rtype, t.c.id == rid, t.c.version_id == vid)
        )).first()
        return _row_to_stored(row) if row else None

    async def write(
        self, conn: AsyncConnection, stored: StoredResource, previous_version: int | None,
        tokens: set[TokenEntry], refs: set[RefEntry],
    ) -> None:
        """Write one new version. previous_version None means the resource must not exist yet.
        Raises VersionConflict when someone else wrote in between."""
        content = jsoncodec.dumps(stored.content).decode("utf-8") if stored.content is not None else None
        current = {
            "version_id": stored.version_id, "last_updated": stored.last_updated,
            "deleted": stored.deleted, "content": content, "blob_id": stored.blob_id,
        }
        if previous_version is None:
            insert = sa.insert(resources).values(resource_type=stored.resource_type, id=stored.id, **current)
            try:
                if conn.dialect.name == "sqlite":
                    # A failed statement leaves an SQLite transaction usable: no savepoint needed (two
                    # round trips fewer); PostgreSQL aborts the whole transaction without one.
                    await conn.execute(insert)
                else:
                    async with conn.begin_nested():
                        await conn.execute(insert)
            except IntegrityError as exc:
                raise VersionConflict(f"{stored.resource_type}/{stored.id} was created concurrently") from exc
        else:
            result = await conn.execute(
                sa.update(resources)
                .where(resources.c.resource_type == stored.resource_type, resources.c.id == stored.id,
                       resources.c.version_id == previous_version)
                .values(**current)
            )
            if result.rowcount != 1:
                raise VersionConflict(f"{stored.resource_type}/{stored.id} changed concurrently")
        await conn.execute(sa.insert(resource_versions).values(
            resource_type=stored.resource_type, id=stored.id, method=stored.method, **current))
        await self._reindex(conn, stored.resource_type, stored.id, tokens, refs, fresh=previous_version is None)

    async def rewrite(self, conn: AsyncConnection, stored: StoredResource, tokens: set[TokenEntry],
                      refs: set[RefEntry]) -> None:
        """Replace the content and search index of the version `stored` that this same transaction wrote
        (work deferred to the end of a transaction Bundle completes it); the version id stays."""
        content = jsoncodec.dumps(stored.content).decode("utf-8")
        for table in (resources, resource_versions):
            await conn.execute(sa.update(table).where(
                table.c.resource_type == stored.resource_type, table.c.id == stored.id,
                table.c.version_id == stored.version_id).values(content=content))
        await self._reindex(conn, stored.resource_type, stored.id, tokens, refs)

    async def _reindex(self, conn: AsyncConnection, rtype: str, rid: str,
                       tokens: set[TokenEntry], refs: set[RefEntry], fresh: bool = False) -> None:
        """Replaces the resource's index rows; `fresh`: it had no row before (so it has no index rows:
        expunge removes them together with the resource)."""
        for table in () if fresh else (search_tokens, search_refs):
            await conn.execute(sa.delete(table).where(table.c.resource_type == rtype, table.c.id == rid))
        if tokens:
            await conn.execute(sa.insert(search_tokens), [
                {"resource_type": rtype, "id": rid, "param": t.param, "system": t.system, "value": t.value}
                for t in tokens])
        if refs:
            await conn.execute(sa.insert(search_refs), [
                {"resource_type": rtype, "id": rid, "param": r.param, "target": r.target} for r in refs])

    def _search_where(self, q: SearchQuery) -> list[Any]:
        t = resources
        where: list[Any] = [t.c.resource_type == q.resource_type, t.c.deleted.is_(False)]
        if q.ids is not None:
            where.append(t.c.id.in_(q.ids))
        for prefix, start, end in q.updated:
            col = t.c.last_updated
            where.append({
                "eq": sa.and_(col >= start, col < end), "ne": sa.or_(col < start, col >= end),
                "gt": col >= end, "ge": col >= start, "lt": col < start, "le": col < end,
                "sa": col >= end, "eb": col < start,
            }[prefix])
        for tf in q.tokens:
            st = search_tokens
            alts = []
            for system, value in tf.alternatives:
                cond = [st.c.param == tf.param]
                if value is not None:
                    cond.append(st.c.value == value)
                if system is not None:
                    cond.append(st.c.system.is_(None) if system == "" else st.c.system == system)
                alts.append(sa.and_(*cond))
            where.append(sa.exists().where(
                st.c.resource_type == t.c.resource_type, st.c.id == t.c.id, sa.or_(*alts)))
        for rf in q.refs:
            sr = search_refs
            where.append(sa.exists().where(
                sr.c.resource_type == t.c.resource_type, sr.c.id == t.c.id,
                sr.c.param == rf.param, sr.c.target.in_(rf.targets)))
        return where

    async def search(self, conn: AsyncConnection, q: SearchQuery) -> list[StoredResource]:
        t = resources
        order = [t.c.last_updated.desc(), t.c.id.desc()] if q.sort_desc else [t.c.last_updated, t.c.id]
        stmt = sa.select(t).where(*self._search_where(q)).order_by(*order).limit(q.count).offset(q.offset)
        return [_row_to_stored(r) for r in (await conn.execute(stmt)).all()]

    async def count(self, conn: AsyncConnection, q: SearchQuery) -> int:
        stmt = sa.select(sa.func.count()).select_from(resources).where(*self._search_where(q))
        return int((await conn.execute(stmt)).scalar() or 0)

    async def history(
        self, conn: AsyncConnection, rtype: str | None, rid: str | None, since_us: int | None,
        count: int, offset: int,
    ) -> tuple[list[StoredResource], int]:
        t = resource_versions
        where: list[Any] = []
        if rtype:
            where.append(t.c.resource_type == rtype)
        if rid:
            where.append(t.c.id == rid)
        if since_us is not None:
            where.append(t.c.last_updated >= since_us)
        total = int((await conn.execute(sa.select(sa.func.count()).select_from(t).where(*where))).scalar() or 0)
        stmt = (sa.select(t).where(*where)
                .order_by(t.c.last_updated.desc(), t.c.version_id.desc()).limit(count).offset(offset))
        return [_row_to_stored(r) for r in (await conn.execute(stmt)).all()], total

    async def current_page(self, conn: AsyncConnection, rtype: str | None, after: tuple[str, str] | None,
                           limit: int) -> list[StoredResource]:
        """Up to `limit` current, not deleted resources (of `rtype`, or every type) ordered by
        (type, id), starting after the (type, id) key `after`: a keyset page, cheap at any depth."""
        t = resources
        where: list[Any] = [t.c.deleted == sa.false()]
        if rtype:
            where.append(t.c.resource_type == rtype)
        if after is not None:
            where.append(sa.tuple_(t.c.resource_type, t.c.id) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
        stmt = sa.select(t).where(*where).order_by(t.c.resource_type, t.c.id).limit(limit)
        return [_row_to_stored(r) for r in (await conn.execute(stmt)).all()]

    async def versions_of(self, conn: AsyncConnection, rtype: str, rid: str) -> list[StoredResource]:
        t = resource_versions
        stmt = sa.select(t).where(t.c.resource_type == rtype, t.c.id == rid).order_by(t.c.version_id)
        return [_row_to_stored(r) for r in (await conn.execute(stmt)).all()]

    async def expunge(self, conn: AsyncConnection, rtype: str, rid: str) -> None:
        for table in (resources, resource_versions, search_tokens, search_refs):
            await conn.execute(sa.delete(table).where(table.c.resource_type == rtype, table.c.id == rid))

    async def last_deletion(self, conn: AsyncConnection, rtype: str, rid: str) -> int | None:
        """When rtype/rid was last deleted (microseconds), or None: what came before belongs to an earlier
        life of the id."""
        t = resource_versions
        stmt = sa.select(sa.func.max(t.c.last_updated)).where(
            t.c.resource_type == rtype, t.c.id == rid, t.c.deleted.is_(True))
        found = (await conn.execute(stmt)).scalar()
        return int(found) if found is not None else None

    async def first_deletion_after(self, conn: AsyncConnection, rtype: str, rid: str, after_us: int) -> int | None:
        """The version id of the first deletion of rtype/rid later than `after_us`, or None."""
        t = resource_versions
        stmt = sa.select(sa.func.min(t.c.version_id)).where(
            t.c.resource_type == rtype, t.c.id == rid, t.c.deleted.is_(True), t.c.last_updated > after_us)
        found = (await conn.execute(stmt)).scalar()
        return int(found) if found is not None else None

    async def in_compartment(self, conn: AsyncConnection, rtype: str, rid: str, patient: str) -> bool:
        """Whether the current version of rtype/rid lies in the compartment of `patient` (`Patient/1`)."""
        sr = search_refs
        stmt = sa.select(sa.literal(1)).where(
            sr.c.resource_type == rtype, sr.c.id == rid, sr.c.param == COMPARTMENT, sr.c.target == patient)
        return (await conn.execute(stmt.limit(1))).first() is not None
