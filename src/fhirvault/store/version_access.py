"""What access rules read of every stored version (its Patient compartments, a Binary's securityContext), so
that history applies them inside its query as search does with the current index (store/search_sql.py)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.driver_batch import DriverStatement, run_batch
from fhirvault.store.schema import metadata

# One row per (version, param, target); a deletion has none: the version before it speaks for it.
version_access = sa.Table(
    "version_access", metadata,
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("id", sa.String(64), nullable=False),
    sa.Column("version_id", sa.Integer, nullable=False),
    sa.Column("param", sa.String(64), nullable=False),  # `_compartment` or `_securityContext`
    sa.Column("target", sa.String(512), nullable=False),
    # on SQLite (after step 0015) the table is keyed by all its columns and has no other index
    sa.Index("ix_version_access_owner", "resource_type", "id", "version_id", "param"),
)


_INSERT = f"INSERT INTO {version_access.name} (resource_type, id, version_id, param, target) VALUES (?, ?, ?, ?, ?)"


def access_statements(rtype: str, rid: str, version_id: int,
                      refs: set[tuple[str, str]] | None) -> list[DriverStatement]:
    """The driver statements (store/driver_batch.py) that store the (param, target) `refs` of version
    `version_id` of rtype/rid (None: a deletion, nothing)."""
    if not refs:
        return []
    return [DriverStatement(_INSERT, [(rtype, rid, version_id, param, target.replace("\x00", "\ufffd"))
                                      for param, target in sorted(refs)])]


async def write_version_access(conn: AsyncConnection, rtype: str, rid: str, version_id: int,
                               refs: set[tuple[str, str]] | None, replace: bool = False) -> None:
    """Store the (param, target) `refs` of version `version_id` of rtype/rid (None: a deletion, nothing);
    `replace`: the version's rows are written again (its content changed within its transaction)."""
    t = version_access
    if replace:
        await conn.execute(sa.delete(t).where(t.c.resource_type == rtype, t.c.id == rid, t.c.version_id == version_id))
    await run_batch(conn, access_statements(rtype, rid, version_id, refs))


async def delete_version_access(conn: AsyncConnection, rtype: str, rid: str) -> None:
    """Remove the rows of every version of rtype/rid (expunge, or before they are computed again)."""
    t = version_access
    await conn.execute(sa.delete(t).where(t.c.resource_type == rtype, t.c.id == rid))
