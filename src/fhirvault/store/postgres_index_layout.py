"""PostgreSQL's indexes of the search index tables (migration step 0016); nothing changes on SQLite.

- Owner lookups (the delete of a resource's rows, sort keys, `:missing`, a chain's rows of one
  resource) use an index on (resource_type, id) instead of (resource_type, id, param). A resource has
  several rows per table, all with the same (resource_type, id): PostgreSQL's B-tree deduplication keeps
  them as one key with a list of row pointers, so the index is a third of the size of one whose keys
  also hold the parameter and are nearly all distinct (bench/search.py: the owner indexes were the
  largest part of the index). The parameter is then a filter on a resource's few rows.
- String and uri values are compared with `LIKE 'prefix%'` (string's default starts-with, uri
  `:below`). A B-tree under a database's linguistic collation (anything but "C") cannot answer that, so
  the lookup read every value of the parameter; with the `varchar_pattern_ops` operator class it reads
  the prefix's range. Equality still uses it; nothing orders by these columns through the index.

Step 0017: reference rows have one value index, led by the target (target, resource_type, param), as on
SQLite (store/sqlite_index_layout.py), instead of two: (resource_type, param, target) and (target). Every
search of reference rows by value names the target (`subject=Patient/1`, a chain's `target IN (...)`,
`_revinclude`, `_list`, access rules' `_compartment`), so the one index serves them all, and the second
index, about a tenth of the index tables' size (bench/search.py), is gone. Rows of one parameter are never
read through it without their target: `:missing`, sorts, `_include` and `_has` go by owner.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.search_tables import INDEX_TABLES

# the (resource_type, id, param) indexes that the (resource_type, id) ones replace, by table
_OWNER_PARAM = {t.name: f"ix_{t.name}_owner" for t in INDEX_TABLES} | {
    "search_tokens": "ix_tokens_owner_param", "search_refs": "ix_refs_owner_param"}
# lookup indexes whose value column is searched by prefix: (table, index, value column)
_PREFIX_LOOKUPS = (("search_strings", "ix_search_strings_lookup", "value"),
                   ("search_uris", "ix_search_uris_lookup", "value"))


def owner_index(table: str) -> str:
    """The name of the (resource_type, id) index of an index table on PostgreSQL."""
    return f"ix_{table}_by_owner"


async def postgres_index_layout_0016(conn: AsyncConnection) -> None:
    """Migration step: on PostgreSQL, the owner indexes on (resource_type, id) and the prefix lookups
    with pattern operators (see the module docstring); on SQLite nothing."""
    if conn.dialect.name != "postgresql":
        return
    for table in INDEX_TABLES:
        await conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {owner_index(table.name)} ON {table.name} (resource_type, id)")
        await conn.exec_driver_sql(f"DROP INDEX IF EXISTS {_OWNER_PARAM[table.name]}")
    for table_name, index, column in _PREFIX_LOOKUPS:
        await conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index}")
        await conn.exec_driver_sql(
            f"CREATE INDEX {index} ON {table_name} (resource_type, param, {column} varchar_pattern_ops)")


# the value index of reference rows from step 0017 on, and the target-only index it replaces
REFS_LOOKUP = "ix_refs_lookup"
_REFS_TARGET_ONLY = "ix_refs_target"
REFS_LOOKUP_COLUMNS = "(target, resource_type, param)"


async def postgres_refs_by_target_0017(conn: AsyncConnection) -> None:
    """Migration step: on PostgreSQL, the reference rows' value index led by the target replaces both
    (resource_type, param, target) and (target) (see the module docstring); on SQLite nothing (its layout
    has it since step 0015). Within the migration's transaction: a crash leaves the old indexes whole and
    the step runs again; an index that already has the new columns is kept."""
    if conn.dialect.name != "postgresql":
        return
    definition = (await conn.execute(sa.text(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :n"),
        {"n": REFS_LOOKUP})).scalar()
    if not (isinstance(definition, str) and definition.endswith(REFS_LOOKUP_COLUMNS)):
        await conn.exec_driver_sql(f"DROP INDEX IF EXISTS {REFS_LOOKUP}")
        await conn.exec_driver_sql(f"CREATE INDEX {REFS_LOOKUP} ON search_refs {REFS_LOOKUP_COLUMNS}")
    await conn.exec_driver_sql(f"DROP INDEX IF EXISTS {_REFS_TARGET_ONLY}")
