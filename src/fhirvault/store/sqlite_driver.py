"""SQLite connections for the async engine that cross to the connection's thread once per statement.

aiosqlite runs every sqlite3 call on a thread of its own and awaits each one: a cursor is made, the
statement run, its rows fetched and the cursor closed in four trips, and the `BEGIN` of a transaction
costs four more. Each trip wakes the thread and then the event loop again (about 30 µs of CPU on a
small machine), which made the trips the largest cost of a small read. `OneTripConnection` keeps
aiosqlite's thread (the event loop never waits for SQLite) but runs a statement with its fetch in one
trip, and sends a transaction's `BEGIN` along with its first statement. The `ROLLBACK` that ends a
transaction which changed nothing (every read) runs on the caller's thread when the connection's thread
is idle: ending a WAL read transaction only releases its read mark, no disk I/O, cheaper than a trip. A
read on SQLite thus costs one trip (`BEGIN` + `SELECT`) instead of nine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

Rows = list[Any]
Outcome = tuple[Any, Rows, int, int | None]  # description, rows, rowcount, lastrowid


def _run(raw: sqlite3.Connection, begin: str | None, sql: str, parameters: Any, many: bool) -> Outcome:
    """On the connection's thread: the pending BEGIN, then the statement, all of its rows."""
    if begin is not None:
        raw.execute(begin)
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        elif parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description is not None else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor:
    """The async cursor SQLAlchemy's aiosqlite adapter drives: `execute` does the whole work in one trip,
    and the fetch methods hand out the rows it brought back."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: Rows = []

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, sql: str, parameters: Any = None) -> OneTripCursor:
        """Runs `sql` (and a pending BEGIN) and keeps all of its rows, in one trip."""
        self.description, self._rows, self.rowcount, self.lastrowid = \
            await self._connection.run(sql, parameters, many=False)
        return self

    async def executemany(self, sql: str, parameters: Sequence[Any]) -> OneTripCursor:
        """Runs `sql` once per parameter set, in one trip."""
        self.description, self._rows, self.rowcount, self.lastrowid = \
            await self._connection.run(sql, parameters, many=True)
        return self

    async def fetchall(self) -> Rows:
        """The rows not yet handed out."""
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        """The next row, or None."""
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> Rows:
        """The next `size` rows (arraysize when None)."""
        size = self.arraysize if size is None else size
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def setinputsizes(self, *sizes: Any) -> None:
        """Nothing to do (DB-API allows a no-op)."""
        return None

    async def close(self) -> None:
        """Nothing to release: the sqlite3 cursor was closed in its trip."""
        return None


class OneTripConnection(aiosqlite.Connection):
    """An aiosqlite connection (same thread, same sqlite3 calls) whose cursors make one trip per
    statement, and which holds a transaction's BEGIN (`begin_with_next`) until its first statement."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._thread.daemon = True  # as SQLAlchemy makes aiosqlite's: a stuck query never blocks exit
        self._pending_begin: str | None = None
        # Trips queued (counted on the event loop's thread) and finished (counted on the connection's
        # thread): equal when no sqlite3 call is queued or running, even after an awaiting task was
        # cancelled while its statement still ran.
        self._trips = 0
        self._finished = 0
        # sqlite3's total_changes when the current transaction began: unchanged at its end means the
        # transaction wrote nothing.
        self._changes_at_begin: int | None = None

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """aiosqlite's trip to the connection's thread, counted (see `_idle`)."""
        def counted() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                self._finished += 1

        self._trips += 1
        return await super()._execute(counted)

    def _idle(self) -> bool:
        return self._trips == self._finished

    def begin_with_next(self, statement: str) -> None:
        """Send `statement` (BEGIN, BEGIN IMMEDIATE) together with the next one; a transaction that ends
        before any statement then never touches the database."""
        self._pending_begin = statement

    async def run(self, sql: str, parameters: Any, many: bool) -> Outcome:
        """One statement with a pending BEGIN, on the connection's thread: (description, rows, rowcount, lastrowid)."""
        begin = self._take_begin()
        outcome: Outcome = await self._execute(_run, self._conn, begin, sql, parameters, many)
        return outcome

    def _take_begin(self) -> str | None:
        """The pending BEGIN, now to be sent; notes the changes made so far to tell a read-only transaction."""
        begin, self._pending_begin = self._pending_begin, None
        if begin is not None:
            # total_changes reads a counter of the sqlite3 handle: safe while its thread is idle, as it is
            # between the awaited trips of the one task that holds this connection.
            self._changes_at_begin = self._conn.total_changes if self._idle() else None
        return begin

    async def run_in_transaction(self, work: Callable[[sqlite3.Connection], None]) -> None:
        """`work` on the sqlite3 connection, on the connection's thread, after a pending BEGIN: several
        statements in one trip (store/driver_batch.py). Errors of sqlite3 propagate."""
        begin = self._take_begin()

        def run() -> None:
            if begin is not None:
                self._conn.execute(begin)
            work(self._conn)

        await self._execute(run)

    def cursor(self) -> OneTripCursor:  # type: ignore[override]
        """A cursor that makes one trip per statement."""
        return OneTripCursor(self)

    async def commit(self) -> None:
        """COMMIT; nothing when the transaction never ran a statement."""
        if self._pending_begin is not None:
            self._pending_begin = None  # an empty transaction: nothing began, nothing to commit
            return
        self._changes_at_begin = None
        await super().commit()

    async def rollback(self) -> None:
        """ROLLBACK; nothing when the transaction never ran a statement."""
        if self._pending_begin is not None:
            self._pending_begin = None
            return
        began, self._changes_at_begin = self._changes_at_begin, None
        if self._idle() and not self._conn.in_transaction:
            return  # statements ran without a transaction (none began): sqlite3's rollback does nothing
        if began is not None and self._idle() and self._conn.total_changes == began:
            # Nothing was written: ending the transaction releases its WAL read mark, a few memory
            # operations (and at most a non-blocking unlock), so it is done here instead of by a trip.
            self._conn.rollback()
            return
        await super().rollback()


def connector(database: str, **options: Any) -> Callable[[], OneTripConnection]:
    """The `async_creator` of an async engine: a new OneTripConnection to `database` with sqlite3's
    `options` (as SQLAlchemy's dialect derives them from the URL)."""

    def connect() -> OneTripConnection:
        return OneTripConnection(lambda: sqlite3.connect(database, **options))

    return connect
