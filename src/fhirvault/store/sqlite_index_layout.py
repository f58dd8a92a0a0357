"""SQLite's layout of the search index tables: each table is its own owner index (migration 0015).

Schema 0001-0014 made every index table a rowid table with two indexes, one by value (`lookup`: type,
param, value) and one by owner (type, id, param), so that each row was written and stored three times.
On SQLite each index table is instead a WITHOUT ROWID table whose primary key is (resource_type, id,
param, n): the rows of one resource lie together, in the order of that key, so the table itself is the
owner index (deleting a resource's rows, sort keys, `_include`, access rules) and one secondary index
remains, by value. `n` numbers a resource's rows within one table (0, 1, ...), so that the key is unique
without holding the value columns, some of which may be NULL (a token without system).

A secondary index of a WITHOUT ROWID table holds the primary key's columns as well, so the lookup index
gives each match's `id` without reading the table: the `id IN (SELECT id ... )` subqueries of
store/search_sql.py are read from the index alone ("COVERING INDEX" in SQLite's plans). The value
columns each search tests are in the index too (a token's system, both ends of a date or quantity
range), so that a range test over many rows (`date=ge2024`, `value-quantity=gt190`) scans index entries
only. Reference rows have one index led by the target: it serves searches by (type, param, target) and
"who refers to this resource" (`_revinclude=*`, `_list`) alike, which took two indexes before.

Searches read from each candidate resource only its `deleted` flag and its `last_updated` (the default
sort), for thousands of candidates when a parameter is unselective (`code=...` of one Observation in
six): an index on resources (resource_type, id, last_updated, deleted) gives them without reading the
resource rows, whose content fills most of each page (`_summary=count` reads the index alone). From step
0018 it holds `version_id` as well, for the Binary versions that signing a page's Attachment urls needs.

`version_access` (one row per version, param and target, all NOT NULL) becomes a WITHOUT ROWID table keyed
by all its columns, which makes its owner index redundant.

PostgreSQL keeps the layout of schema 0014 (its tables are heaps; an index-organized table has no
equivalent there): everything here runs on SQLite only."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.schema import resources, search_refs, search_tokens
from fhirvault.store.search_tables import (
    ROW_NUMBER,
    search_composite_parts,
    search_composites,
    search_dates,
    search_numbers,
    search_quantities,
    search_strings,
    search_uris,
)
from fhirvault.store.version_access import version_access


@dataclass(frozen=True)
class SqliteIndexTable:
    """One index table's SQLite layout: its lookup index's name and columns (after the primary key
    (resource_type, id, param, n), which every secondary index holds as well)."""

    table: sa.Table
    lookup_name: str
    lookup: tuple[str, ...]


SQLITE_INDEX_TABLES: tuple[SqliteIndexTable, ...] = (
    # `exact` stays out of the lookup index: only `:exact` reads it, after the value has narrowed the rows
    SqliteIndexTable(search_strings, "ix_search_strings_lookup", ("resource_type", "param", "value")),
    SqliteIndexTable(search_tokens, "ix_tokens_lookup", ("resource_type", "param", "value", "system")),
    SqliteIndexTable(search_refs, "ix_refs_lookup", ("target", "resource_type", "param")),
    SqliteIndexTable(search_dates, "ix_search_dates_lookup", ("resource_type", "param", "low", "high")),
    SqliteIndexTable(search_numbers, "ix_search_numbers_lookup", ("resource_type", "param", "low", "high")),
    SqliteIndexTable(search_quantities, "ix_search_quantities_lookup",
                     ("resource_type", "param", "low", "high", "code", "system")),
    SqliteIndexTable(search_uris, "ix_search_uris_lookup", ("resource_type", "param", "value")),
    SqliteIndexTable(search_composites, "ix_search_composites_lookup", ("resource_type", "param", "value1")),
    SqliteIndexTable(search_composite_parts, "ix_search_composite_parts_lookup",
                     ("resource_type", "param", "part", "value")),
)
RESOURCES_OWNER_INDEX = "ix_resources_owner_updated"
# Its columns from step 0018 on: `version_id` last, so that the Binary versions behind a page's Attachment
# urls (store/binary_rows.py `current_versions`) are read from the index alone, not from the table rows.
RESOURCES_OWNER_COLUMNS = "(resource_type, id, last_updated, deleted, version_id)"
_DIALECT = sqlite.dialect()


def _column_sql(column: sa.Column[object]) -> str:
    return f"{column.name} {column.type.compile(_DIALECT)}{'' if column.nullable else ' NOT NULL'}"


async def _rebuild(conn: AsyncConnection, name: str, columns: list[str], key: tuple[str, ...],
                   select: str) -> None:
    """Replace table `name` by a WITHOUT ROWID table of `columns` (DDL) keyed by `key`, filled by `select`
    (over the old table). Its indexes go with the old table."""
    new = f"{name}_0015"
    await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {new}")
    await conn.exec_driver_sql(
        f"CREATE TABLE {new} ({', '.join(columns)}, PRIMARY KEY ({', '.join(key)})) WITHOUT ROWID")
    await conn.exec_driver_sql(f"INSERT INTO {new} {select}")
    await conn.exec_driver_sql(f"DROP TABLE {name}")
    await conn.exec_driver_sql(f"ALTER TABLE {new} RENAME TO {name}")


async def _without_rowid(conn: AsyncConnection, name: str) -> bool:
    """Whether table `name` already has the layout of this module (a WITHOUT ROWID table)."""
    sql = (await conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))).scalar()
    return isinstance(sql, str) and "WITHOUT ROWID" in sql.upper()


async def sqlite_index_layout_0015(conn: AsyncConnection) -> None:
    """Migration step 0015 (SQLite only; nothing on PostgreSQL): every index table and `version_access`
    rebuilt in the layout above, their rows copied (numbered per resource in their old order), and the
    resources' owner index added, within the migration's one transaction, so that a crash leaves the old
    tables whole and the step runs again. A table that already has the layout is left as it is."""
    if conn.dialect.name != "sqlite":
        return
    for spec in SQLITE_INDEX_TABLES:
        t = spec.table
        if await _without_rowid(conn, t.name):
            continue
        owner = ("resource_type", "id", "param")
        values = [c.name for c in t.columns if c.name not in owner]
        ddl = [_column_sql(t.c[c]) for c in owner] + [f"{ROW_NUMBER} INTEGER NOT NULL"] + \
              [_column_sql(t.c[c]) for c in values]
        select = (f"SELECT resource_type, id, param, row_number() OVER (PARTITION BY resource_type, id "
                  f"ORDER BY rowid) - 1, {', '.join(values)} FROM {t.name}")
        await _rebuild(conn, t.name, ddl, (*owner, ROW_NUMBER), select)
        await conn.exec_driver_sql(f"CREATE INDEX {spec.lookup_name} ON {t.name} ({', '.join(spec.lookup)})")
    await conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {RESOURCES_OWNER_INDEX} ON {resources.name} "
                               "(resource_type, id, last_updated, deleted)")
    v = version_access
    if not await _without_rowid(conn, v.name):
        names = [c.name for c in v.columns]
        # a deletion has no rows, and each version's (param, target) pairs are a set: the whole row is the key
        await _rebuild(conn, v.name, [_column_sql(c) for c in v.columns], tuple(names),
                       f"SELECT DISTINCT {', '.join(names)} FROM {v.name}")



async def sqlite_owner_index_versions_0018(conn: AsyncConnection) -> None:
    """Migration step 0018 (SQLite only; nothing on PostgreSQL): the resources' owner index of step 0015
    rebuilt with `version_id` as its last column (RESOURCES_OWNER_COLUMNS). Looking up the current version
    of 300 Binaries then reads the index alone: 0.22 against 0.35 ms on SQLite 3.40. Within the migration's
    transaction, so a crash leaves the old index; an index that already has the column is kept."""
    if conn.dialect.name != "sqlite":
        return
    sql = (await conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (RESOURCES_OWNER_INDEX,))).scalar()
    if isinstance(sql, str) and "version_id" in sql:
        return
    await conn.exec_driver_sql(f"DROP INDEX IF EXISTS {RESOURCES_OWNER_INDEX}")
    await conn.exec_driver_sql(f"CREATE INDEX {RESOURCES_OWNER_INDEX} ON {resources.name} {RESOURCES_OWNER_COLUMNS}")
