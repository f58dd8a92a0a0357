"""Batches of plain statements sent straight to the database driver inside a SQLAlchemy transaction.

Search index rows are written on every create and update: up to eight statements, each with a few
rows. Through SQLAlchemy's async layer a statement costs about 0.3 ms of CPU (statement cache key,
parameter processing, a greenlet switch, the driver adapter) against 0.06 ms for aiosqlite's own
`executemany`, which made that layer most of the cost of indexing (bench/search.py). This module sends
such statements to the driver connection of the caller's transaction: SQLite's connection
(store/sqlite_driver.py) runs them in one call into its thread (one thread hop instead of one per
statement: 0.08 against 0.4 ms of CPU for six statements, and a quarter of the wall time on a loaded
machine); psycopg sends them in one pipeline (one round trip for all of them).

Driver errors are re-raised as SQLAlchemy's DBAPIError subclasses (OperationalError, IntegrityError,
...), so that callers see the same errors as from `AsyncConnection.execute` (store/database.py turns
lost connections into 503 and a full disk into 507)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.sqlite_driver import OneTripConnection


@dataclass(frozen=True)
class DriverStatement:
    """One statement with `?` placeholders and the parameter tuples to run it with (one run per tuple)."""

    sql: str
    rows: Sequence[tuple[Any, ...]]


def _driver_sql(sql: str, dialect: str) -> str:
    # psycopg takes %s (format style); aiosqlite takes ? (qmark). Our statements hold no literal `?` or `%`.
    return sql.replace("?", "%s") if dialect == "postgresql" else sql


async def run_batch(conn: AsyncConnection, statements: Sequence[DriverStatement]) -> None:
    """Run `statements` in order inside `conn`'s open transaction. Statements without rows are skipped.
    Raises sqlalchemy.exc.DBAPIError (its subclass for the driver's error) when the driver fails; the
    caller's transaction is then to be rolled back, as after any failed statement."""
    todo = [s for s in statements if s.rows]
    if not todo:
        return
    dialect = conn.dialect.name
    raw: Any = (await conn.get_raw_connection()).driver_connection
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    current = todo[0]
    try:
        if dialect == "postgresql":
            async with raw.pipeline(), raw.cursor() as cur:
                for current in todo:
                    await cur.executemany(_driver_sql(current.sql, dialect), current.rows)
        elif isinstance(raw, OneTripConnection):
            # every statement in one call into the connection's thread, after the transaction's BEGIN
            # when that is still held back (store/sqlite_driver.py)
            def run_all(sqlite: sqlite3.Connection) -> None:
                nonlocal current
                for current in todo:
                    sqlite.executemany(current.sql, current.rows)

            await raw.run_in_transaction(run_all)
        else:
            for current in todo:
                await raw.executemany(current.sql, current.rows)
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(current.sql, list(current.rows), exc, dbapi_error) from exc


async def fetch_rows(conn: AsyncConnection, sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The rows of one query with `?` placeholders, run straight through `conn`'s driver connection in its
    transaction (on SQLite in one trip, after a held-back BEGIN; on PostgreSQL one round trip): no
    statement compilation and no SQLAlchemy row objects, which cost more than the query for a few
    hundred small rows. Raises sqlalchemy.exc.DBAPIError (its subclass for the driver's error) as
    `run_batch` does."""
    dialect = conn.dialect.name
    raw: Any = (await conn.get_raw_connection()).driver_connection
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    try:
        if isinstance(raw, OneTripConnection):
            _, rows, _, _ = await raw.run(sql, parameters, many=False)
            return rows
        if dialect == "postgresql":
            async with raw.cursor() as cur:
                await cur.execute(_driver_sql(sql, dialect), parameters)
                return list(await cur.fetchall())
        async with raw.execute(sql, parameters) as cursor:
            return list(await cursor.fetchall())
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, [parameters], exc, dbapi_error) from exc
