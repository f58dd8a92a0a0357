"""Batch look-ups of Binary rows (current or named versions, with their blobs' size and hash) for
attachment handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.store.blobs import blobs
from fhirvault.store.driver_batch import fetch_rows
from fhirvault.store.schema import resource_versions, resources

# Ids per statement: well below the bound parameter limits of SQLite and PostgreSQL.
IDS_PER_QUERY = 500


@dataclass(frozen=True)
class BinaryRow:
    """One version of one Binary that is not a deletion (the current one, or one named by version)."""

    id: str
    version_id: int
    resource: dict[str, Any]
    blob_size: int | None  # None for content kept inline in the resource
    blob_sha1: str | None


async def current_binaries(conn: AsyncConnection, ids: set[str], *, with_blobs: bool = False,
                           access_fields_only: bool = False, versions_only: bool = False) -> dict[str, BinaryRow]:
    """The current versions of the given Binaries that exist and are not deleted, by id; one statement
    per IDS_PER_LIST ids (they travel as one list parameter). `with_blobs` adds the blob's size and
    SHA-1 (an outer join); `access_fields_only` gives each resource as just what access decisions read
    (type, id, securityContext, meta.lastUpdated), which spares parsing inline content on the read path;
    `versions_only` reads no content at all (each resource is just its type and id)."""
    stmt = _current_statement(conn.dialect.name, with_blobs, access_fields_only, versions_only)
    out: dict[str, BinaryRow] = {}
    for rid, version_id, content, size, sha1 in await _current_rows(conn, stmt, ids):
        if content is not None:
            out[rid] = BinaryRow(rid, version_id, _resource(rid, content, access_fields_only or versions_only),
                                 size, sha1)
    return out


async def current_versions(conn: AsyncConnection, ids: set[str]) -> dict[str, int]:
    """The current version id of each of the given Binaries that exists and is not deleted (what
    `current_binaries` finds, without reading any content)."""
    # Rewriting a search page's Attachment urls asks this for every Binary the page names: the query goes
    # straight to the driver (store/driver_batch.py), whose rows cost a tenth of SQLAlchemy's.
    sqlite = conn.dialect.name == "sqlite"
    ordered = sorted(ids)
    found: dict[str, int] = {}
    for start in range(0, len(ordered), IDS_PER_LIST):
        chunk = ordered[start:start + IDS_PER_LIST]
        if sqlite:
            rows = await fetch_rows(conn, _CURRENT_VERSIONS_SQLITE, (jsoncodec.dumps(chunk).decode("utf-8"),))
            found.update(jsoncodec.loads(rows[0][0]) if rows and rows[0][0] else {})
        else:
            found.update(await fetch_rows(conn, _CURRENT_VERSIONS_POSTGRES, (chunk,)))
    return found


# current_versions' query: the ids are one list parameter (a JSON array on SQLite, an array on PostgreSQL),
# so its text is the same whatever their number. `deleted IS 0` / `IS false` as SQLAlchemy writes it, so
# the same index serves it. On SQLite the answer is one row, a JSON object {id: version}: the sqlite3
# module gives up and takes back the interpreter lock for every row it steps to, and while the event loop
# serves other requests each of those hand-overs waits for it; one row is one hand-over, not hundreds.
_CURRENT_VERSIONS_SQLITE = ("SELECT json_group_object(id, version_id) FROM resources WHERE resource_type = 'Binary' "
                            "AND id IN (SELECT value FROM json_each(?)) AND deleted IS 0")
_CURRENT_VERSIONS_POSTGRES = ("SELECT id, version_id FROM resources WHERE resource_type = 'Binary' "
                              "AND id = ANY (?::VARCHAR[]) AND deleted IS false")


async def _current_rows(conn: AsyncConnection, stmt: Any, ids: set[str]) -> list[Any]:
    """The rows of a `_current_statement` for `ids`, IDS_PER_LIST ids per execution."""
    ordered = sorted(ids)
    rows: list[Any] = []
    for start in range(0, len(ordered), IDS_PER_LIST):
        chunk = ordered[start:start + IDS_PER_LIST]
        value: Any = jsoncodec.dumps(chunk).decode("utf-8") if conn.dialect.name == "sqlite" else chunk
        rows += (await conn.execute(stmt, {"ids": value})).all()
    return rows


# Ids per statement when they travel as one list parameter (a JSON array on SQLite, an array on PostgreSQL).
IDS_PER_LIST = 5000
_CURRENT: dict[tuple[str, bool, bool, bool], Any] = {}


def _current_statement(dialect: str, with_blobs: bool, access_fields_only: bool, versions_only: bool) -> Any:
    """The statement of `current_binaries`, built once per shape: the ids are one bound list, so the
    statement's text and compiled form are the same whatever their number (a long IN list is compiled
    and bound anew each time, which cost more than the query)."""
    key = (dialect, with_blobs, access_fields_only, versions_only)
    stmt = _CURRENT.get(key)
    if stmt is None:
        t = resources
        matching: sa.ColumnElement[bool]
        if dialect == "sqlite":
            ids = sa.func.json_each(sa.bindparam("ids", type_=sa.String))
            listed: Any = sa.select(sa.column("value")).select_from(ids)
            matching = t.c.id.in_(listed.scalar_subquery())
        else:
            matching = t.c.id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.String)))
        stmt = _select(t, [t.c.resource_type == "Binary", matching, t.c.deleted.is_(False)], with_blobs,
                       access_fields_only, versions_only)
        _CURRENT[key] = stmt
    return stmt


async def binary_versions(conn: AsyncConnection, keys: set[tuple[str, int]], *, with_blobs: bool = False,
                          access_fields_only: bool = False, versions_only: bool = False
                          ) -> dict[tuple[str, int], BinaryRow]:
    """The named versions (id, version) of Binaries that exist and are not deletions, by (id, version),
    like `current_binaries` (one statement per IDS_PER_QUERY versions)."""
    v = resource_versions

    def where(chunk: list[tuple[str, int]]) -> Any:
        return sa.or_(*(sa.and_(v.c.id == rid, v.c.version_id == vid) for rid, vid in chunk))

    rows = await _binary_rows(conn, v, sorted(keys), where, with_blobs, access_fields_only, versions_only)
    return {(row.id, row.version_id): row for row in rows}


async def _binary_rows(conn: AsyncConnection, table: sa.Table, keys: list[Any], matching: Any,
                       with_blobs: bool, access_fields_only: bool, versions_only: bool) -> list[BinaryRow]:
    out: list[BinaryRow] = []
    for start in range(0, len(keys), IDS_PER_QUERY):
        where = [table.c.resource_type == "Binary", matching(keys[start:start + IDS_PER_QUERY]),
                 table.c.deleted.is_(False)]
        stmt = _select(table, where, with_blobs, access_fields_only, versions_only)
        for rid, version_id, content, size, sha1 in (await conn.execute(stmt)).all():
            if content is not None:
                out.append(BinaryRow(rid, version_id, _resource(rid, content, access_fields_only or versions_only),
                                     size, sha1))
    return out


def _select(table: sa.Table, where: list[Any], with_blobs: bool, access_fields_only: bool,
            versions_only: bool = False) -> Any:
    """id, version_id, content, blob size, blob SHA-1 of the rows of `table` matching `where`."""
    if versions_only:
        return sa.select(table.c.id, table.c.version_id, sa.literal("").label("content"), sa.null().label("size"),
                         sa.null().label("sha1")).where(*where)
    if with_blobs:
        return (sa.select(table.c.id, table.c.version_id, table.c.content, blobs.c.size, blobs.c.sha1)
                .select_from(table.outerjoin(blobs, blobs.c.id == table.c.blob_id)).where(*where))
    if access_fields_only:
        # Only a resource that names a securityContext is sent back: the others' content (perhaps
        # tens of KiB of inline base64 each) is not what an access decision reads.
        has_context = table.c.content.like(f"%{SECURITY_CONTEXT}%")
        content = sa.case((has_context, table.c.content), else_="").label("content")
        return sa.select(table.c.id, table.c.version_id, content, sa.null().label("size"),
                         sa.null().label("sha1")).where(*where)
    return sa.select(table.c.id, table.c.version_id, table.c.content, sa.null().label("size"),
                     sa.null().label("sha1")).where(*where)


SECURITY_CONTEXT = '"securityContext"'


def _resource(rid: str, content: str, access_fields_only: bool) -> dict[str, Any]:
    if access_fields_only and SECURITY_CONTEXT not in content:
        return {"resourceType": "Binary", "id": rid}
    resource: dict[str, Any] = jsoncodec.loads(content)
    if access_fields_only:
        # meta.lastUpdated too: a securityContext resource deleted since the Binary was written is judged
        # as it was then (security/policy.py), which needs the time of writing.
        fields: dict[str, Any] = {k: resource[k] for k in ("resourceType", "id", "securityContext") if k in resource}
        meta = resource.get("meta")
        if isinstance(meta, dict) and "lastUpdated" in meta:
            fields["meta"] = {"lastUpdated": meta["lastUpdated"]}
        return fields
    return resource
