"""Batch look-ups of current Binary rows (and their blobs' size and hash) for attachment handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.store.blobs import blobs
from fhirvault.store.schema import resources

# Ids per statement: well below the bound parameter limits of SQLite and PostgreSQL.
IDS_PER_QUERY = 500


@dataclass(frozen=True)
class BinaryRow:
    """The current, not deleted version of one Binary."""

    id: str
    version_id: int
    resource: dict[str, Any]
    blob_size: int | None  # None for content kept inline in the resource
    blob_sha1: str | None


async def current_binaries(conn: AsyncConnection, ids: set[str], *, with_blobs: bool = False,
                           access_fields_only: bool = False) -> dict[str, BinaryRow]:
    """The current versions of the given Binaries that exist and are not deleted, by id; one statement
    per IDS_PER_QUERY ids. `with_blobs` adds the blob's size and SHA-1 (an outer join);
    `access_fields_only` gives each resource as just what access decisions read (type, id,
    securityContext), which spares parsing inline content on the read path."""
    out: dict[str, BinaryRow] = {}
    ordered = sorted(ids)
    r = resources
    for start in range(0, len(ordered), IDS_PER_QUERY):
        chunk = ordered[start:start + IDS_PER_QUERY]
        where = [r.c.resource_type == "Binary", r.c.id.in_(chunk), r.c.deleted.is_(False)]
        if with_blobs:
            stmt = (sa.select(r.c.id, r.c.version_id, r.c.content, blobs.c.size, blobs.c.sha1)
                    .select_from(r.outerjoin(blobs, blobs.c.id == r.c.blob_id)).where(*where))
        elif access_fields_only:
            # Only a resource that names a securityContext is sent back: the others' content (perhaps
            # tens of KiB of inline base64 each) is not what an access decision reads.
            has_context = r.c.content.like(f"%{SECURITY_CONTEXT}%")
            stmt = sa.select(r.c.id, r.c.version_id, sa.case((has_context, r.c.content), else_="").label("content"),
                             sa.null().label("size"), sa.null().label("sha1")).where(*where)
        else:
            stmt = sa.select(r.c.id, r.c.version_id, r.c.content, sa.null().label("size"),
                             sa.null().label("sha1")).where(*where)
        for row in (await conn.execute(stmt)).all():
            if row.content is None:
                continue
            out[row.id] = BinaryRow(row.id, row.version_id, _resource(row.id, row.content, access_fields_only),
                                    row.size, row.sha1)
    return out


SECURITY_CONTEXT = '"securityContext"'


def _resource(rid: str, content: str, access_fields_only: bool) -> dict[str, Any]:
    if access_fields_only and SECURITY_CONTEXT not in content:
        return {"resourceType": "Binary", "id": rid}
    resource: dict[str, Any] = jsoncodec.loads(content)
    if access_fields_only:
        return {k: resource[k] for k in ("resourceType", "id", "securityContext") if k in resource}
    return resource
