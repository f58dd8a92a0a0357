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
"""

from __future__ import annotations

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
