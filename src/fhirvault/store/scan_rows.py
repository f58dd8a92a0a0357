"""The malware scan tables: one verdict per content (by SHA-256), and which resource versions hold that content."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.fhir.scan_definitions import CLEAN, ERROR, INFECTED, PENDING, SCAN_STATES, SKIPPED
from fhirvault.store.schema import metadata

__all__ = ["CLEAN", "ERROR", "INFECTED", "PENDING", "SCAN_STATES", "SKIPPED"]

# One row per distinct content: identical bytes (in any Binary, version or Attachment) share one verdict
# and are scanned once. A content without a row has never been seen by the scanner: it counts as pending.
content_scans = sa.Table(
    "content_scans", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),  # hex, as in blobs.sha256
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("signature", sa.String(255), nullable=True),  # the scanner's name for what it found (infected)
    sa.Column("detail", sa.Text, nullable=True),  # why it is error or skipped; never shown to clients
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("scanned_at", sa.BigInteger, nullable=True),  # microseconds since the epoch of the last verdict
    # How long the scanner took (seconds): a later holding of the content waits as long before taking the verdict
    # over, so its timing does not tell the uploader that the bytes were stored (and scanned) before.
    sa.Column("scan_seconds", sa.Float, nullable=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_content_scans_state", "state"),
)

# Where a content can be read from (the scan job looks its bytes up here) and which Binary version holds it
# (search joins on it). `resource_type/id/version_id` names a version; a Binary's own content, or the inline
# `data` of an Attachment of any other resource. Until a scan job has `checked` a holding, that version shows
# `pending` whatever the content's verdict: a new upload of content stored before behaves like new content,
# so neither its answers nor its scan status tell the uploader that someone else stored the same bytes.
content_refs = sa.Table(
    "content_refs", metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("checked", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_content_refs_sha256", "sha256", "checked"),
)


@dataclass(frozen=True)
class ScanRecord:
    """The verdict on one content: `state` one of fhir.scan_definitions.SCAN_STATES, `signature` when infected."""

    sha256: str
    state: str
    signature: str | None
    detail: str | None
    size: int | None
    scanned_at: int | None
    scan_seconds: float | None = None


def _record(row: Any) -> ScanRecord:
    return ScanRecord(row.sha256, row.state, row.signature, row.detail, row.size, row.scanned_at, row.scan_seconds)


def _insert_ignoring_duplicates(conn: AsyncConnection, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect (SQLite and PostgreSQL both have it)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


async def add_refs(conn: AsyncConnection, refs: Iterable[tuple[str, str, int, str]], now: int) -> None:
    """Record (resource_type, id, version_id, sha256) holdings, and a `pending` verdict for every content
    that has none yet; existing rows stay as they are."""
    refs_list = list(refs)
    rows = [{"resource_type": t, "id": i, "version_id": v, "sha256": s, "checked": False} for t, i, v, s in refs_list]
    if not rows:
        return
    await conn.execute(_insert_ignoring_duplicates(conn, content_refs), rows)
    shas = sorted({s for *_, s in refs_list})
    await conn.execute(_insert_ignoring_duplicates(conn, content_scans),
                       [{"sha256": s, "state": PENDING, "updated_at": now} for s in shas])


async def get(conn: AsyncConnection, sha256: str) -> ScanRecord | None:
    """The verdict recorded for the content with this SHA-256 (hex), or None."""
    row = (await conn.execute(sa.select(content_scans).where(content_scans.c.sha256 == sha256))).first()
    return _record(row) if row else None


async def states_of(conn: AsyncConnection, shas: Iterable[str]) -> dict[str, ScanRecord]:
    """The recorded verdicts of these contents, by SHA-256 (contents without one are absent)."""
    wanted = sorted(set(shas))
    out: dict[str, ScanRecord] = {}
    for start in range(0, len(wanted), 500):
        rows = await conn.execute(sa.select(content_scans).where(content_scans.c.sha256.in_(wanted[start:start + 500])))
        out.update({r.sha256: _record(r) for r in rows})
    return out


async def version_contents(conn: AsyncConnection, keys: Iterable[tuple[str, int]]
                           ) -> dict[tuple[str, int], tuple[str, bool]]:
    """The SHA-256 of the content of these Binary versions (id, version), with whether a scan job has checked
    the holding, as recorded; absent when unknown."""
    wanted = sorted(set(keys))
    out: dict[tuple[str, int], tuple[str, bool]] = {}
    for start in range(0, len(wanted), 300):
        chunk = wanted[start:start + 300]
        c = content_refs.c
        stmt = sa.select(c.id, c.version_id, c.sha256, c.checked).where(
            c.resource_type == "Binary", sa.or_(*(sa.and_(c.id == i, c.version_id == v) for i, v in chunk)))
        out.update({(r.id, r.version_id): (r.sha256, bool(r.checked)) for r in await conn.execute(stmt)})
    return out


async def holdings_checked(conn: AsyncConnection, keys: Iterable[tuple[str, str, int, str]]
                           ) -> dict[tuple[str, str, int, str], bool]:
    """Whether a scan job has checked each of these holdings (resource type, id, version, SHA-256 hex) of a
    content, as recorded; holdings not recorded (stored before scanning was on) are absent."""
    wanted = sorted(set(keys))
    out: dict[tuple[str, str, int, str], bool] = {}
    c = content_refs.c
    for start in range(0, len(wanted), 200):
        chunk = wanted[start:start + 200]
        stmt = sa.select(c.resource_type, c.id, c.version_id, c.sha256, c.checked).where(sa.or_(*(
            sa.and_(c.resource_type == t, c.id == i, c.version_id == v, c.sha256 == h) for t, i, v, h in chunk)))
        out.update({(r.resource_type, r.id, r.version_id, r.sha256): bool(r.checked) for r in await conn.execute(stmt)})
    return out


async def holding_checked(conn: AsyncConnection, rtype: str, rid: str, version: int, sha256: str) -> bool | None:
    """Whether a scan job has checked this version's holding of the content; None when none is recorded."""
    c = content_refs.c
    found = (await conn.execute(sa.select(c.checked).where(
        c.resource_type == rtype, c.id == rid, c.version_id == version, c.sha256 == sha256))).first()
    return None if found is None else bool(found.checked)


async def mark_checked(conn: AsyncConnection, sha256: str) -> None:
    """Every holding of the content is checked: its versions show the content's verdict from now on."""
    await conn.execute(sa.update(content_refs).where(content_refs.c.sha256 == sha256,
                                                     content_refs.c.checked.is_(False)).values(checked=True))


async def unchecked_shas(conn: AsyncConnection, after: str = "", limit: int = 500) -> list[str]:
    """Contents with a holding no scan job has checked yet, in SHA-256 order after `after`."""
    stmt = (sa.select(content_refs.c.sha256).distinct()
            .where(content_refs.c.checked.is_(False), content_refs.c.sha256 > after)
            .order_by(content_refs.c.sha256).limit(limit))
    return list((await conn.execute(stmt)).scalars())


async def refs_of(conn: AsyncConnection, sha256: str, limit: int = 20) -> list[tuple[str, str, int]]:
    """Some resource versions (type, id, version) that held this content, newest first."""
    stmt = (sa.select(content_refs.c.resource_type, content_refs.c.id, content_refs.c.version_id)
            .where(content_refs.c.sha256 == sha256).order_by(content_refs.c.version_id.desc()).limit(limit))
    return [(r.resource_type, r.id, r.version_id) for r in await conn.execute(stmt)]


async def record_verdict(conn: AsyncConnection, sha256: str, state: str, *, signature: str | None = None,
                         detail: str | None = None, size: int | None = None, scan_seconds: float | None = None,
                         now: int) -> None:
    """Set the verdict on a content (creating its row when missing)."""
    values = {"state": state, "signature": signature, "detail": detail, "size": size, "updated_at": now,
              "scan_seconds": scan_seconds,
              "scanned_at": now if state in (CLEAN, INFECTED, SKIPPED) else None}
    result = await conn.execute(sa.update(content_scans).where(content_scans.c.sha256 == sha256).values(**values))
    if result.rowcount == 0:
        await conn.execute(sa.insert(content_scans).values(sha256=sha256, **values))


async def shas_in_states(conn: AsyncConnection, states: Iterable[str], after: str = "", limit: int = 500) -> list[str]:
    """Contents whose verdict is one of `states`, in SHA-256 order after `after` (for paging)."""
    stmt = (sa.select(content_scans.c.sha256)
            .where(content_scans.c.state.in_(list(states)), content_scans.c.sha256 > after)
            .order_by(content_scans.c.sha256).limit(limit))
    return list((await conn.execute(stmt)).scalars())


def scan_state_matches(owner: Any, states: list[str], missing: bool | None = None) -> sa.ColumnElement[bool]:
    """SQL: the version of `owner` (a `resources` row) holds content whose verdict is one of `states`; a
    holding not checked yet, or a content without a verdict row, counts as pending. With `missing` given,
    instead: the version holds no content at all (True) or some content (False), whatever its verdict."""
    holding = (content_refs.c.resource_type == owner.c.resource_type, content_refs.c.id == owner.c.id,
               content_refs.c.version_id == owner.c.version_id)
    if missing is not None:
        held = sa.exists(sa.select(content_refs.c.sha256).where(*holding))
        return sa.not_(held) if missing else held
    state = sa.case((content_refs.c.checked.is_(True), sa.func.coalesce(content_scans.c.state, PENDING)),
                    else_=PENDING)
    return sa.exists(
        sa.select(content_refs.c.sha256)
        .select_from(content_refs.outerjoin(content_scans, content_scans.c.sha256 == content_refs.c.sha256))
        .where(*holding, state.in_(states)))
