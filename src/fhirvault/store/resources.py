"""Resource rows: current state, version history and search indexes, always written together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.fhir.search_index import IndexRows
from fhirvault.store.blobs import BlobRecord, BlobRegistry
from fhirvault.store.database import note_written
from fhirvault.store.driver_batch import DriverStatement, fetch_rows, run_batch
from fhirvault.store.scan_rows import content_refs
from fhirvault.store.schema import resource_versions, resources, search_refs
from fhirvault.store.search_sql import (
    COMPARTMENT,
    SECURITY_CONTEXT,
    Criteria,
    Restriction,
    SortKey,
    after_sql,
    before_sql,
    check_after,
    criteria_sql,
    param_rows,
    restriction_sql,
    sort_columns,
    sort_terms,
    version_restriction_sql,
)
from fhirvault.store.search_tables import delete_index, index_statements, numbered, write_index
from fhirvault.store.version_access import access_statements, delete_version_access, write_version_access


def _access_of(index: IndexRows | None) -> set[tuple[str, str]] | None:
    """The rows of a version's index that access rules read (see store/version_access.py)."""
    return None if index is None else {r for r in index.refs if r[0] in (COMPARTMENT, SECURITY_CONTEXT)}


class VersionConflict(Exception):
    """Another writer changed the resource between our read and our write; the caller retries."""


@dataclass
class StoredResource:
    """One stored version: type, id, version id, when it was written (microseconds since the epoch), whether
    it is a deletion (then `content` is None), the content as stored, the blob holding a Binary's
    bytes, and the HTTP method that wrote it (for history entries)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: int  # microseconds since the epoch
    deleted: bool
    content: dict[str, Any] | None
    blob_id: str | None = None
    method: str = "PUT"


def row_to_stored(row: Any, method: str | None = None) -> StoredResource:
    """A StoredResource from a `resources` or `resource_versions` row (content decoded from its JSON text)."""
    content = jsoncodec.loads(row.content) if row.content is not None else None
    if method is None:
        # Only version rows have a method. Asked for by name, a row without one raises inside SQLAlchemy, and
        # building that error cost a fifth of a 100-resource search page's server time.
        method = str(row.method) if "method" in row._fields else "PUT"
    return StoredResource(
        resource_type=row.resource_type, id=row.id, version_id=row.version_id,
        last_updated=row.last_updated, deleted=bool(row.deleted), content=content,
        blob_id=row.blob_id, method=method,
    )


# The locking read of a write, built once with bound parameters: building one per call, and computing its
# cache key, cost more than running it on a small row.
_CURRENT = sa.select(resources).where(resources.c.resource_type == sa.bindparam("rtype"),
                                      resources.c.id == sa.bindparam("rid"))
_CURRENT_FOR_UPDATE = _CURRENT.with_for_update()


class _PointRow(tuple[Any, ...]):
    """A `resources` or `resource_versions` row from the driver, read by column name as row_to_stored reads
    SQLAlchemy's rows."""

    _fields = ("resource_type", "id", "version_id", "last_updated", "deleted", "content", "blob_id", "method")
    resource_type = property(lambda self: self[0])
    id = property(lambda self: self[1])
    version_id = property(lambda self: self[2])
    last_updated = property(lambda self: self[3])
    deleted = property(lambda self: self[4])
    content = property(lambda self: self[5])
    blob_id = property(lambda self: self[6])
    method = property(lambda self: self[7])


# The reads by primary key, the most frequent statements of all, go straight to the driver (store/driver_batch):
# through SQLAlchemy's execution layer a point read cost about 0.2 ms of CPU more than the query itself, a
# fifth of a 1 KiB Binary read. Both select the columns in _PointRow's order.
_CURRENT_SQL = ("SELECT resource_type, id, version_id, last_updated, deleted, content, blob_id, 'PUT' FROM resources "
                "WHERE resource_type = ? AND id = ?")
_VERSION_SQL = ("SELECT resource_type, id, version_id, last_updated, deleted, content, blob_id, method "
                "FROM resource_versions WHERE resource_type = ? AND id = ? AND version_id = ?")
# ... and of every write of a version (the current row inserted or moved on, the version row added): the
# inserts as plain statements for the driver's batch (store/driver_batch), as the index rows are written.
_INSERT_CURRENT_SQL = ("INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, content, blob_id) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)")
_INSERT_VERSION_SQL = ("INSERT INTO resource_versions (resource_type, id, version_id, last_updated, method, deleted, "
                       "content, blob_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_CURRENT = sa.insert(resources)
_UPDATE_CURRENT = sa.update(resources).where(
    resources.c.resource_type == sa.bindparam("b_rtype"), resources.c.id == sa.bindparam("b_rid"),
    resources.c.version_id == sa.bindparam("b_previous"),
).values({name: sa.bindparam(f"v_{name}") for name in ("version_id", "last_updated", "deleted", "content", "blob_id")})


def _owned_by(table: Any, owners: list[tuple[str, str]]) -> Any:
    """The rows of `table` owned by one of `owners` ((type, id) pairs): `type = ? AND id IN (...)` per type,
    which both databases look up by the owner key; SQLite reads a row-value `IN (VALUES ...)` over the
    reference rows by scanning them all (_include took tens of milliseconds at 100,000 resources)."""
    by_type: dict[str, list[str]] = {}
    for rtype, rid in owners:
        by_type.setdefault(rtype, []).append(rid)
    return sa.or_(*[sa.and_(table.c.resource_type == rtype, table.c.id.in_(ids)) for rtype, ids in by_type.items()])


class ResourceStore:
    """SQL access for resources; every method runs inside a transaction the caller owns. A version that
    refers to a blob counts as one reference to it (BlobRegistry `refs`), taken where the version is
    inserted (`write`) and given back where it is removed (`expunge`), so no other path can forget it."""

    def __init__(self, registry: BlobRegistry | None = None, text_index: bool = True, validated: bool = True) -> None:
        self.registry = registry or BlobRegistry()
        # whether the index holds the word rows of `_text` and `_content` (the server's SEARCH_TEXT_INDEX):
        # writers index them only then, and searches refuse those parameters otherwise
        self.text_index = text_index
        # whether every resource is validated against R4 before it is written (VALIDATION_ENABLED): only
        # then can a search refuse a code that validation would never store
        self.validated = validated

    async def get(self, conn: AsyncConnection, rtype: str, rid: str, for_update: bool = False
                  ) -> StoredResource | None:
        """The current row; `for_update` locks it (PostgreSQL) so that concurrent writers queue."""
        if for_update:
            row = (await conn.execute(_CURRENT_FOR_UPDATE, {"rtype": rtype, "rid": rid})).first()
            return row_to_stored(row) if row else None
        rows = await fetch_rows(conn, _CURRENT_SQL, (rtype, rid))
        return row_to_stored(_PointRow(rows[0])) if rows else None

    async def get_version(self, conn: AsyncConnection, rtype: str, rid: str, vid: int) -> StoredResource | None:
        """Version `vid` of [rtype]/[rid] (a deletion included), or None."""
        rows = await fetch_rows(conn, _VERSION_SQL, (rtype, rid, vid))
        return row_to_stored(_PointRow(rows[0])) if rows else None

    async def write(
        self, conn: AsyncConnection, stored: StoredResource, previous_version: int | None,
        index: IndexRows | None,
    ) -> None:
        """Write one new version and replace its search index rows with `index` (None: no rows, as for
        a deletion). previous_version None means the resource must not exist yet.
        Raises VersionConflict when someone else wrote in between."""
        content = jsoncodec.dumps_stored(stored.content).decode("utf-8") if stored.content is not None else None
        current = {
            "version_id": stored.version_id, "last_updated": stored.last_updated,
            "deleted": stored.deleted, "content": content, "blob_id": stored.blob_id,
        }
        row = {"resource_type": stored.resource_type, "id": stored.id, **current}
        # The version row, the index rows and the version's access rows go in one batch (one trip to the
        # driver), on SQLite with the new current row ahead of them: a failed statement leaves an SQLite
        # transaction usable, so no savepoint is needed. PostgreSQL aborts the whole transaction on a failed
        # statement: there the current row is inserted alone, inside a savepoint.
        batch: list[DriverStatement] = []
        if previous_version is None:
            if conn.dialect.name == "sqlite":
                batch.append(DriverStatement(_INSERT_CURRENT_SQL, [(
                    stored.resource_type, stored.id, stored.version_id, stored.last_updated, stored.deleted,
                    content, stored.blob_id)]))
            else:
                try:
                    async with conn.begin_nested():
                        await conn.execute(_INSERT_CURRENT, row)
                except IntegrityError as exc:
                    raise VersionConflict(f"{stored.resource_type}/{stored.id} was created concurrently") from exc
        else:
            result = await conn.execute(_UPDATE_CURRENT, {
                "b_rtype": stored.resource_type, "b_rid": stored.id, "b_previous": previous_version,
                **{f"v_{k}": v for k, v in current.items()}})
            if result.rowcount != 1:
                raise VersionConflict(f"{stored.resource_type}/{stored.id} changed concurrently")
        batch.append(DriverStatement(_INSERT_VERSION_SQL, [(
            stored.resource_type, stored.id, stored.version_id, stored.last_updated, stored.method, stored.deleted,
            content, stored.blob_id)]))
        note_written(conn)
        if stored.blob_id is not None:
            await self.registry.add_reference(conn, stored.blob_id)
        batch += index_statements(stored.resource_type, stored.id, index, new=previous_version is None,
                                  numbered=numbered(conn))
        batch += access_statements(stored.resource_type, stored.id, stored.version_id, _access_of(index))
        try:
            await run_batch(conn, batch)
        except IntegrityError as exc:
            if exc.statement == _INSERT_CURRENT_SQL:
                raise VersionConflict(f"{stored.resource_type}/{stored.id} was created concurrently") from exc
            raise

    async def rewrite(self, conn: AsyncConnection, stored: StoredResource, index: IndexRows | None) -> None:
        """Replace the content and search index of the version `stored` that this same transaction wrote
        (work deferred to the end of a transaction Bundle completes it); the version id stays."""
        content = jsoncodec.dumps_stored(stored.content).decode("utf-8")
        for table in (resources, resource_versions):
            await conn.execute(sa.update(table).where(
                table.c.resource_type == stored.resource_type, table.c.id == stored.id,
                table.c.version_id == stored.version_id).values(content=content))
        await write_index(conn, stored.resource_type, stored.id, index)
        await write_version_access(conn, stored.resource_type, stored.id, stored.version_id, _access_of(index),
                                   replace=True)

    def _select(self, criteria: Criteria, restriction: Restriction | None, cutoff_us: int | None) -> Any:
        t = resources
        where = criteria_sql(criteria, t) + restriction_sql(restriction, t)
        if cutoff_us is not None:
            where.append(t.c.last_updated <= cutoff_us)
        return where

    async def search(self, conn: AsyncConnection, criteria: Criteria, restriction: Restriction | None = None,
                     sort: list[SortKey] | None = None, count: int = 20, offset: int = 0,
                     cutoff_us: int | None = None, after: Sequence[Any] | None = None,
                     before: Sequence[Any] | None = None, inclusive: bool = False) -> list[StoredResource]:
        """One page of current resources matching `criteria` within `restriction`, ordered by `sort`
        (then by type and id; by last update when no sort is given). `cutoff_us` leaves out resources
        changed after that instant, so that later pages of one search see the same set. `after`: the
        sort values (see `sort_values`) of the last resource of the previous page; the page starts after
        it (and `offset` entries further). `before` (instead of `after`): the sort values of the first
        resource of the next page; the page is the `count` resources just before it (that one too when
        `inclusive`), still in the search's order, fewer only when the result starts sooner (FHIR R4
        http.html#paging, the `previous` link)."""
        t = resources
        terms = sort_terms(self._keys(sort), t, criteria.types)
        where = self._select(criteria, restriction, cutoff_us)
        if after is not None:
            where.append(after_sql(terms, after))
        if before is not None:
            # walked in the reverse order from that point, then turned round: LIMIT keeps the nearest ones
            where.append(before_sql(terms, before, inclusive))
            stmt = (sa.select(t).where(*where)
                    .order_by(*sort_columns(self._keys(sort), t, criteria.types, reverse=True)).limit(count))
            return [row_to_stored(r) for r in reversed((await conn.execute(stmt)).all())]
        stmt = (sa.select(t).where(*where)
                .order_by(*sort_columns(self._keys(sort), t, criteria.types)).limit(count).offset(offset))
        return [row_to_stored(r) for r in (await conn.execute(stmt)).all()]

    def check_after(self, types: Sequence[str], sort: list[SortKey] | None, after: Sequence[Any]) -> None:
        """Raises ValueError unless `after` could be the sort values of a search on `types` by `sort`."""
        check_after(sort_terms(self._keys(sort), resources, types), after)

    @staticmethod
    def _keys(sort: list[SortKey] | None) -> list[SortKey]:
        return sort if sort else [SortKey("_lastUpdated", "_lastUpdated")]

    async def sort_values_of(self, conn: AsyncConnection, types: Sequence[str], sort: list[SortKey] | None,
                             refs: list[tuple[str, str]]) -> list[list[Any]]:
        """The values each of `refs` ((type, id) pairs of existing resources) has for each ORDER BY term of a
        search on `types` sorted by `sort` (None for a missing value; numbers, strings, microseconds), in the
        order of `refs`, in one query: the cursors of a page's first and last match, for
        `search(after=...)` and `search(before=...)`."""
        if not refs:
            return []
        t = resources
        terms = sort_terms(self._keys(sort), t, types)
        rows = (await conn.execute(sa.select(t.c.resource_type, t.c.id, *[term.expr for term in terms]).where(
            sa.tuple_(t.c.resource_type, t.c.id).in_(sorted(set(refs)))))).all()
        found = {(r[0], r[1]): list(r[2:]) for r in rows}
        return [found[ref] for ref in refs]

    async def count(self, conn: AsyncConnection, criteria: Criteria, restriction: Restriction | None = None,
                    cutoff_us: int | None = None) -> int:
        """How many current resources match (the same rules as `search`)."""
        stmt = sa.select(sa.func.count()).select_from(resources).where(
            *self._select(criteria, restriction, cutoff_us))
        return int((await conn.execute(stmt)).scalar() or 0)

    async def matching_ids(self, conn: AsyncConnection, criteria: Criteria, restriction: Restriction | None = None,
                           limit: int | None = None) -> list[tuple[str, str]]:
        """(type, id) of current resources matching `criteria`, in id order, at most `limit`."""
        t = resources
        stmt = sa.select(t.c.resource_type, t.c.id).where(*self._select(criteria, restriction, None)).order_by(
            t.c.resource_type, t.c.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        return [(r[0], r[1]) for r in (await conn.execute(stmt)).all()]

    async def get_many(self, conn: AsyncConnection, refs: list[tuple[str, str]],
                       restriction: Restriction | None = None) -> list[StoredResource]:
        """The current live rows of the given (type, id) pairs that `restriction` lets through."""
        if not refs:
            return []
        t = resources
        out: list[StoredResource] = []
        for start in range(0, len(refs), 500):
            chunk = refs[start:start + 500]
            stmt = sa.select(t).where(
                sa.tuple_(t.c.resource_type, t.c.id).in_(chunk), t.c.deleted.is_(False),
                *restriction_sql(restriction, t))
            out += [row_to_stored(r) for r in (await conn.execute(stmt)).all()]
        return out

    async def references_from(self, conn: AsyncConnection, owners: list[tuple[str, str]], params: list[str] | None
                              ) -> list[tuple[str, str, str]]:
        """(owner type, param, target) of the reference index rows of `owners`; `params` None for all. The
        param is the one whose rows hold the target (`subject` for Observation `patient`: see
        fhir/search_storage.py)."""
        sr = search_refs
        out: list[tuple[str, str, str]] = []
        for start in range(0, len(owners), 500):
            chunk = owners[start:start + 500]
            where = [_owned_by(sr, chunk), ~sr.c.param.startswith("_", autoescape=True)]
            if params is not None:
                types = sorted({rtype for rtype, _ in chunk})
                where.append(sa.or_(*[param_rows(sr, sr.c.resource_type, types, p) for p in params]))
            rows = await conn.execute(sa.select(sr.c.resource_type, sr.c.param, sr.c.target).where(*where))
            out += [(r[0], r[1], r[2]) for r in rows.all()]
        return out

    async def referencing(self, conn: AsyncConnection, source_type: str | None, param: str | None,
                          targets: list[str], restriction: Restriction | None = None, limit: int | None = None
                          ) -> list[StoredResource]:
        """Live resources of `source_type` (None: of any type) whose `param` (None: any reference
        parameter) references one of `targets`; at most `limit` (in type and id order) per 500 targets."""
        t, sr = resources, search_refs
        out: list[StoredResource] = []
        for start in range(0, len(targets), 500):
            where = [sr.c.target.in_(targets[start:start + 500]), ~sr.c.param.startswith("_", autoescape=True)]
            if source_type is not None:
                where.append(sr.c.resource_type == source_type)
            if param is not None:
                # the rows that hold `param` (fhir/search_storage.py); without a source type, no parameter is named
                where.append(param_rows(sr, sr.c.resource_type, [source_type], param) if source_type is not None
                             else sr.c.param == param)
            # driven from the reference rows (by target), never by a scan of the resources
            owners = sa.select(sr.c.resource_type, sr.c.id).where(*where)
            stmt = sa.select(t).where(sa.tuple_(t.c.resource_type, t.c.id).in_(owners), t.c.deleted.is_(False),
                                      *restriction_sql(restriction, t))
            if source_type is not None:
                stmt = stmt.where(t.c.resource_type == source_type)
            if limit is not None:
                stmt = stmt.order_by(t.c.resource_type, t.c.id).limit(limit)
            out += [row_to_stored(r) for r in (await conn.execute(stmt)).all()]
        return out

    async def history(
        self, conn: AsyncConnection, rtype: str | None, rid: str | None, since_us: int | None,
        count: int, offset: int, at: tuple[int, int] | None = None, restriction: Restriction | None = None,
        types: list[str] | None = None, until_us: int | None = None, with_total: bool = True,
    ) -> tuple[list[StoredResource], int | None]:
        """Versions newest first, and how many there are (None unless `with_total`), all in SQL.
        `since_us`: changed at or after; `until_us`: at or before (the snapshot later pages keep to);
        `at` ([start, end) in microseconds): versions that were current at some moment of that range
        (FHIR R4 history `_at`); `restriction`: the caller's access rules, judged by each version's
        own content (a deletion by the version before it); `types`: the resource types the caller may see
        (system history; None for all)."""
        t = resource_versions
        where: list[Any] = []
        if rtype:
            where.append(t.c.resource_type == rtype)
        elif types is not None:
            where.append(t.c.resource_type.in_(types))
        if rid:
            where.append(t.c.id == rid)
        if since_us is not None:
            where.append(t.c.last_updated >= since_us)
        if until_us is not None:
            where.append(t.c.last_updated <= until_us)
        if at is not None:
            later = resource_versions.alias()
            replaced = (sa.select(sa.func.min(later.c.last_updated))
                        .where(later.c.resource_type == t.c.resource_type, later.c.id == t.c.id,
                               later.c.version_id > t.c.version_id).scalar_subquery())
            where += [t.c.last_updated < at[1], sa.or_(replaced.is_(None), replaced > at[0])]
        where += version_restriction_sql(restriction, t)
        total = None
        if with_total:
            total = int((await conn.execute(sa.select(sa.func.count()).select_from(t).where(*where))).scalar() or 0)
        stmt = (sa.select(t).where(*where)
                .order_by(t.c.last_updated.desc(), t.c.resource_type, t.c.id, t.c.version_id.desc())
                .limit(count).offset(offset))
        return [row_to_stored(r) for r in (await conn.execute(stmt)).all()], total

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
        return [row_to_stored(r) for r in (await conn.execute(stmt)).all()]

    async def versions_of(self, conn: AsyncConnection, rtype: str, rid: str) -> list[StoredResource]:
        """Every version of [rtype]/[rid], oldest first."""
        t = resource_versions
        stmt = sa.select(t).where(t.c.resource_type == rtype, t.c.id == rid).order_by(t.c.version_id)
        return [row_to_stored(r) for r in (await conn.execute(stmt)).all()]

    async def expunge(self, conn: AsyncConnection, rtype: str, rid: str) -> list[BlobRecord]:
        """Remove every version of rtype/rid and its search index; returns the blobs whose last reference
        went with them (released in this transaction; the caller removes their bytes after the commit).
        Blobs that versions of other resources (or of nothing else) still refer to keep their bytes."""
        t = resource_versions
        counts = {str(row[0]): int(row[1]) for row in (await conn.execute(
            sa.select(t.c.blob_id, sa.func.count()).where(t.c.resource_type == rtype, t.c.id == rid,
                                                          t.c.blob_id.is_not(None)).group_by(t.c.blob_id))).all()}
        # content_refs too: a re-created id starts again at version 1, which must not inherit the old content's
        # scan verdict (the verdicts themselves belong to the content and stay).
        for table in (resources, resource_versions, content_refs):
            await conn.execute(sa.delete(table).where(table.c.resource_type == rtype, table.c.id == rid))
        await delete_index(conn, rtype, rid)
        await delete_version_access(conn, rtype, rid)
        return await self.registry.drop_references(conn, counts)

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

    async def deletions_of(self, conn: AsyncConnection, refs: list[tuple[str, str]]
                           ) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """The deletions of each (type, id) as (version id, microseconds), oldest first, in one statement
        per 500 resources; resources never deleted are absent."""
        t = resource_versions
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for start in range(0, len(refs), 500):
            stmt = (sa.select(t.c.resource_type, t.c.id, t.c.version_id, t.c.last_updated)
                    .where(sa.tuple_(t.c.resource_type, t.c.id).in_(refs[start:start + 500]), t.c.deleted.is_(True))
                    .order_by(t.c.version_id))
            for row in (await conn.execute(stmt)).all():
                out.setdefault((row.resource_type, row.id), []).append((row.version_id, row.last_updated))
        return out

    async def in_compartment_of(self, conn: AsyncConnection, refs: list[tuple[str, str]], patient: str
                                ) -> set[tuple[str, str]]:
        """Those of the (type, id) whose current version lies in the compartment of `patient`, in one
        statement per 500 resources (`in_compartment` for many)."""
        sr = search_refs
        out: set[tuple[str, str]] = set()
        for start in range(0, len(refs), 500):
            stmt = sa.select(sr.c.resource_type, sr.c.id).distinct().where(
                sa.tuple_(sr.c.resource_type, sr.c.id).in_(refs[start:start + 500]), sr.c.param == COMPARTMENT,
                sr.c.target == patient)
            out.update((row.resource_type, row.id) for row in (await conn.execute(stmt)).all())
        return out

    async def in_compartment(self, conn: AsyncConnection, rtype: str, rid: str, patient: str) -> bool:
        """Whether the current version of rtype/rid lies in the compartment of `patient` (`Patient/1`)."""
        sr = search_refs
        stmt = sa.select(sa.literal(1)).where(
            sr.c.resource_type == rtype, sr.c.id == rid, sr.c.param == COMPARTMENT, sr.c.target == patient)
        return (await conn.execute(stmt.limit(1))).first() is not None
