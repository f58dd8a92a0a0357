"""Search index tables, one per value kind, and writing a resource's rows into them.

Every table holds (resource_type, id, param, ...) rows of current resource versions only; a new
version replaces its rows in the same transaction as the version itself. Tokens and references keep
the tables of schema 0001 (`search_tokens`, `search_refs`). The tables and indexes defined here are
PostgreSQL's layout (and SQLite's up to schema 0014); on SQLite, migration 0015 rebuilds them keyed by
owner with one lookup index each, and numbers each resource's rows (store/sqlite_index_layout.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.fhir.search_index import IndexRows
from fhirvault.fhir.search_storage import aliased_codes, stored_as
from fhirvault.store.driver_batch import DriverStatement, run_batch
from fhirvault.store.schema import metadata, resources, search_refs, search_tokens
from fhirvault.store.version_access import version_access


def _table(name: str, *columns: sa.Column[Any], lookup: tuple[str, ...]) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        *columns,
        sa.Index(f"ix_{name}_lookup", "resource_type", "param", *lookup),
        # (type, id, param): the correlated lookup of every EXISTS and sort key; without `param` here the
        # planner may prefer the value index and scan a whole parameter once per candidate resource.
        # PostgreSQL, with its statistics kept (Database.refresh_statistics), has (type, id) instead: step
        # 0016, store/postgres_index_layout.py
        sa.Index(f"ix_{name}_owner", "resource_type", "id", "param"),
    )


search_strings = _table(
    "search_strings",
    sa.Column("value", sa.String(255), nullable=False),  # normalized: case-folded, accents removed
    sa.Column("exact", sa.Text, nullable=False),
    lookup=("value",),
)
search_dates = _table(
    "search_dates",
    sa.Column("low", sa.BigInteger, nullable=False),  # microseconds since the epoch, inclusive
    sa.Column("high", sa.BigInteger, nullable=False),  # exclusive
    lookup=("low", "high"),
)
search_numbers = _table(
    "search_numbers",
    sa.Column("low", sa.Float, nullable=False),
    sa.Column("high", sa.Float, nullable=False),
    lookup=("low",),
)
search_quantities = _table(
    "search_quantities",
    sa.Column("system", sa.String(255), nullable=True),
    sa.Column("code", sa.String(255), nullable=True),
    sa.Column("low", sa.Float, nullable=False),
    sa.Column("high", sa.Float, nullable=False),
    lookup=("low",),
)
search_uris = _table(
    "search_uris",
    sa.Column("value", sa.String(512), nullable=False),
    lookup=("value",),
)
search_composites = _table(
    "search_composites",
    sa.Column("system1", sa.String(255), nullable=True),
    sa.Column("value1", sa.String(512), nullable=True),
    sa.Column("system2", sa.String(255), nullable=True),
    sa.Column("value2", sa.String(512), nullable=True),
    sa.Column("low2", sa.Float, nullable=True),
    sa.Column("high2", sa.Float, nullable=True),
    lookup=("value1",),
)
# Composites of three or more components: a row per component value, numbered by the element it was
# read from (`element`) and the component's position (`part`), so that one search value's parts must all
# match within one element.
search_composite_parts = _table(
    "search_composite_parts",
    sa.Column("element", sa.Integer, nullable=False),
    sa.Column("part", sa.Integer, nullable=False),
    sa.Column("system", sa.String(255), nullable=True),
    sa.Column("value", sa.String(512), nullable=True),
    sa.Column("low", sa.Float, nullable=True),
    sa.Column("high", sa.Float, nullable=True),
    lookup=("part", "value"),
)

# Resumable rebuild of the index: one row per resource type still to do, with the last id done.
search_reindex = sa.Table(
    "search_reindex", metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("after_id", sa.String(64), nullable=False, default=""),
)

INDEX_TABLES: tuple[sa.Table, ...] = (search_strings, search_tokens, search_refs, search_dates, search_numbers,
                                      search_quantities, search_uris, search_composites, search_composite_parts)
NEW_TABLES = (search_strings, search_dates, search_numbers, search_quantities, search_uris, search_composites,
              search_reindex)

# IndexRows field -> (table, its value columns in tuple order after `param`)
_ROW_TABLES: dict[str, tuple[sa.Table, tuple[str, ...]]] = {
    "strings": (search_strings, ("value", "exact")),
    "tokens": (search_tokens, ("system", "value")),
    "refs": (search_refs, ("target",)),
    "dates": (search_dates, ("low", "high")),
    "numbers": (search_numbers, ("low", "high")),
    "quantities": (search_quantities, ("system", "code", "low", "high")),
    "uris": (search_uris, ("value",)),
    "composites": (search_composites, ("system1", "value1", "system2", "value2", "low2", "high2")),
    "composite_parts": (search_composite_parts, ("element", "part", "system", "value", "low", "high")),
}
# SQLite only (store/sqlite_index_layout.py): the number of a row among its resource's rows in one table
ROW_NUMBER = "n"
_INF = 1e300  # open Range ends: finite, because PostgreSQL and SQLite differ on storing infinities


def _finite(v: Any) -> Any:
    """A value either database keeps: infinities made finite, and NUL characters (which PostgreSQL text
    refuses, and which earlier releases let into stored resources; no query can hold one) replaced."""
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return _INF if v > 0 else -_INF
    if isinstance(v, str) and "\x00" in v:
        return v.replace("\x00", "\ufffd")
    return v


def column_limit(column: Any) -> int | None:
    """The most characters `column` holds (its VARCHAR length), or None for a column of any length."""
    length = getattr(column.type, "length", None)
    return length if isinstance(length, int) else None


# Hex characters of a cut value's SHA-256 that end its stored form (see `fitted`).
_DIGEST = 16


def fitted(value: str, limit: int) -> str:
    """`value` as an index column of `limit` characters holds it: as it is when it fits, else its first
    characters, `#` and 16 hex characters of its SHA-256, `limit` in all. Two long values that share their
    first characters are then still told apart (a search for one never finds the other: a conditional
    update or delete must not reach the wrong resource), and one search value finds what it is equal to."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST]
    return f"{value[:limit - _DIGEST - 1]}#{digest}"


def as_stored(column: Any, value: Any) -> Any:
    """A search value as the index keeps equal values in `column` (`fitted` to its length; PostgreSQL
    refuses longer values, SQLite would keep them), so that it compares with the rows as written. Anything
    but a string, or a column of any length, as it is."""
    limit = column_limit(column)
    return fitted(value, limit) if limit is not None and isinstance(value, str) else value


# IndexRows field -> the length of each of its value columns (None: any); the `param` column holds our codes.
_LIMITS: dict[str, tuple[int | None, ...]] = {
    name: (None, *(column_limit(table.c[c]) for c in columns)) for name, (table, columns) in _ROW_TABLES.items()}


def _stored(row: tuple[Any, ...], limits: tuple[int | None, ...], prefixes: bool) -> tuple[Any, ...]:
    """One index row as written: values `_finite`, and strings longer than their column `fitted` to it;
    `prefixes` (the normalized strings, searched by what they start with): cut to it instead, since only
    their first characters are compared (a search value longer than that is refused)."""
    out = []
    for value, limit in zip(row, limits, strict=True):
        value = _finite(value)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            value = value[:limit] if prefixes else fitted(value, limit)
        out.append(value)
    return tuple(out)


def _insert_sql(table: sa.Table, columns: tuple[str, ...], numbered: bool) -> str:
    names = ("resource_type", "id", "param", *((ROW_NUMBER,) if numbered else ()), *columns)
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"


# by "numbered": SQLite's tables (store/sqlite_index_layout.py) number each resource's rows
_INSERTS: dict[bool, dict[str, str]] = {
    numbered: {name: _insert_sql(table, columns, numbered) for name, (table, columns) in _ROW_TABLES.items()}
    for numbered in (False, True)}
_DELETES: tuple[str, ...] = tuple(f"DELETE FROM {t.name} WHERE resource_type = ? AND id = ?" for t in INDEX_TABLES)


def _delete_statements(rtype: str, rid: str) -> list[DriverStatement]:
    return [DriverStatement(sql, [(rtype, rid)]) for sql in _DELETES]


async def delete_index(conn: AsyncConnection, rtype: str, rid: str) -> None:
    """Remove every index row of rtype/rid."""
    await run_batch(conn, _delete_statements(rtype, rid))


def numbered(conn: AsyncConnection) -> bool:
    """Whether the index tables of `conn`'s database number each resource's rows (SQLite's layout,
    store/sqlite_index_layout.py; every SQLite database has it once migrated)."""
    return conn.dialect.name == "sqlite"


def index_statements(rtype: str, rid: str, rows: IndexRows | None, *, new: bool = False,
                     numbered: bool = False) -> list[DriverStatement]:
    """The driver statements (store/driver_batch.py) that replace the index rows of rtype/rid with `rows`
    (None: the resource is gone, no rows); `new`: the resource has just been inserted, so there are no old
    rows to remove; `numbered`: rows get their number `n` (see `numbered()`). A delete per table unless
    `new`, an insert per table with rows."""
    statements = [] if new else _delete_statements(rtype, rid)
    if rows is not None:
        for name, sql in _INSERTS[numbered].items():
            values = getattr(rows, name)
            if not values:
                continue
            limits, prefixes = _LIMITS[name], name == "strings"
            if numbered:
                data = [(rtype, rid, row[0], n, *_stored(row, limits, prefixes)[1:]) for n, row in enumerate(values)]
            else:
                data = [(rtype, rid, *_stored(row, limits, prefixes)) for row in values]
            statements.append(DriverStatement(sql, data))
    return statements


async def write_index(conn: AsyncConnection, rtype: str, rid: str, rows: IndexRows | None,
                      new: bool = False) -> None:
    """Replace the index rows of rtype/rid with `rows` (see index_statements), in one batch of driver
    statements (store/driver_batch.py)."""
    await run_batch(conn, index_statements(rtype, rid, rows, new=new, numbered=numbered(conn)))


# The same (type, id, param) lookup on the token and reference tables of schema 0001.
OWNER_PARAM_INDEXES = (
    sa.Index("ix_tokens_owner_param", search_tokens.c.resource_type, search_tokens.c.id, search_tokens.c.param),
    sa.Index("ix_refs_owner_param", search_refs.c.resource_type, search_refs.c.id, search_refs.c.param),
)


async def create_search_tables(conn: AsyncConnection) -> None:
    """Migration step: the new index tables, and every resource type marked for a rebuild of its index."""
    await conn.run_sync(lambda sync: metadata.create_all(sync, tables=list(NEW_TABLES)))
    def create_indexes(sync: Any) -> None:
        for index in OWNER_PARAM_INDEXES:
            index.create(sync, checkfirst=True)

    await conn.run_sync(create_indexes)
    types = (await conn.execute(sa.select(resources.c.resource_type).distinct())).scalars().all()
    if types:
        await conn.execute(sa.insert(search_reindex), [{"resource_type": t, "after_id": ""} for t in types])


# Schema 0001's (type, id) indexes on tokens and references: a prefix of the (type, id, param) ones above.
_REDUNDANT_INDEXES = ("ix_tokens_owner", "ix_refs_owner")
# The index tables there are when step 0013 runs (step 0014 adds the composite parts, and rebuilds every
# type's rows without those of parameters stored as others).
_TABLES_0013 = tuple(t for t in INDEX_TABLES if t is not search_composite_parts)


async def lean_search_index(conn: AsyncConnection) -> None:
    """Migration step: drop the index rows of parameters stored as the rows of others
    (fhir/search_storage.py) and the two indexes the owner indexes make redundant."""
    for name in _REDUNDANT_INDEXES:
        await conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
    types = (await conn.execute(sa.select(resources.c.resource_type).distinct())).scalars().all()
    for rtype in types:
        for code in aliased_codes(rtype):
            if stored_as(rtype, code).target_type is not None:
                # only the reference rows: `code:identifier` rows stay the parameter's own
                await conn.execute(sa.delete(search_refs).where(
                    search_refs.c.resource_type == rtype, search_refs.c.param == code))
                continue
            for table in _TABLES_0013:
                await conn.execute(sa.delete(table).where(
                    table.c.resource_type == rtype,
                    sa.or_(table.c.param == code, table.c.param.startswith(f"{code}:", autoescape=True))))


# Who refers to a resource, whatever the referring type and parameter (`_revinclude=*`, `_list`).
REFS_TARGET_INDEX = sa.Index("ix_refs_target", search_refs.c.target)


async def add_search_tables_0014(conn: AsyncConnection) -> None:
    """Migration step: the table of composites with three or more components, the access rows of every
    version (store/version_access.py), an index of reference targets, and every stored resource type
    marked for a rebuild of its index (those composites, `_text`, `_content`, Location `near`, and the
    versions' access rows)."""
    await conn.run_sync(lambda sync: metadata.create_all(sync, tables=[search_composite_parts, version_access]))
    await conn.run_sync(lambda sync: REFS_TARGET_INDEX.create(sync, checkfirst=True))
    types = (await conn.execute(sa.select(resources.c.resource_type).distinct())).scalars().all()
    await conn.execute(sa.delete(search_reindex))
    if types:
        await conn.execute(sa.insert(search_reindex), [{"resource_type": t, "after_id": ""} for t in types])
