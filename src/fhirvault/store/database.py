"""The SQL engine: one code path for SQLite (WAL) and PostgreSQL, read and write transactions, migrations."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from fhirvault.errors import InsufficientStorage, Unavailable
from fhirvault.store import migrations, sqlite_driver
from fhirvault.store.write_lock import FileWriteLock

# Seconds a new PostgreSQL connection may take before the database counts as away; and how long a
# request waits for a pooled connection. Both bound the time to a 503 during an outage.
CONNECT_TIMEOUT = 5
POOL_TIMEOUT = 10
# A PostgreSQL table's planner statistics are stale once more than this many rows plus this share of its
# live rows have changed since its last ANALYZE (autovacuum_analyze_threshold and _scale_factor's defaults).
STALE_ROWS = 50
STALE_SHARE = 0.1
# Resource versions this process writes to PostgreSQL after which the statistics are checked at once rather
# than at the next minute: STALE_ROWS plus STALE_SHARE of all it wrote before (Database.statistics_due). A young
# database that takes its first few hundred resources within a minute is otherwise planned as if empty:
# nested loops rescanning whole index tables per candidate, a chained search running for minutes.
# SQLite connections each process keeps open, and opens beyond them under load. Each is a sqlite3
# connection and its aiosqlite thread: idle ones cost no CPU, while one opened and closed per request
# (SQLAlchemy's default keeps 5) costs a thread start, the connection's PRAGMAs and its functions,
# more than the read it serves.
SQLITE_POOL_SIZE = 32
# A pooled PostgreSQL connection that sat unused this many seconds is pinged before use (a server restart
# or an idle timeout may have closed it). One used more recently is not: a ping on every checkout was a
# round trip per request. A connection that died in between fails its statement (503); the pool then
# drops every connection as old as it, and the next request gets a fresh one.
PING_AFTER_IDLE_SECONDS = 1.0
SQLITE_MAX_OVERFLOW = 32
# WAL frames after which a commit copies the WAL back into the database (SQLite's default: 1000 pages,
# 4 MiB). A create with its search index dirties some 40 pages of a dozen B-trees (the index tables and
# their lookup indexes, bench/search.py), so at the default every ~25th create ran a checkpoint: two
# fsyncs, and the WAL's pages read back and written to the database. Ten times the window checkpoints a
# tenth as often, and pages dirtied again within it (the B-trees' upper levels) are copied once: per
# indexed create, 90 % fewer fsyncs, 77 % fewer page reads, 8 % fewer page writes (strace, 20,000
# resources). The WAL file grows to about 40 MiB before it is reused. A serving process also checkpoints
# every SQLITE_CHECKPOINT_SECONDS (a setting) on its own (Database.checkpoint), so that a commit reaches
# this window only when writes outrun those (or in a process that serves nothing, such as the CLI's).
SQLITE_WAL_AUTOCHECKPOINT = 10_000


# The key under which a write transaction's connection counts the resource versions written (note_written).
_WRITTEN = "fhirvault_versions_written"


def note_written(conn: AsyncConnection, versions: int = 1) -> None:
    """Counts `versions` resource versions written in `conn`'s write transaction, for the planner's
    statistics (Database.statistics_due): a transaction Bundle of 500 entries weighs 500 writes, not one."""
    if _WRITTEN in conn.info:
        conn.info[_WRITTEN] += versions


@asynccontextmanager
async def _translated_outages() -> AsyncIterator[None]:
    """Lost connections, refused connects, an exhausted pool and a full disk become domain errors
    (503 with Retry-After, 507) instead of 500s; the transaction was rolled back, so nothing changed."""
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        text = str(getattr(exc, "orig", exc) or exc).lower()
        if "disk is full" in text or "no space left" in text:
            raise InsufficientStorage("The database has no room left; nothing was written") from exc
        raise Unavailable("The database does not answer; retry later", part="database") from exc


class Database:
    """Owns the engine. Writes on SQLite take an in-process lock, a lock file shared with the other
    processes on the same database (see FileWriteLock) and BEGIN IMMEDIATE, so that concurrent writers
    queue instead of failing with 'database is locked'."""

    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int = 20) -> None:
        """`url`: a SQLAlchemy async URL (sqlite+aiosqlite or postgresql+psycopg). `pool_size` and
        `max_overflow` bound the PostgreSQL connections of this process (kept, and opened beyond them
        under load); SQLite ignores them."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        self._file_lock: FileWriteLock | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._file_lock = FileWriteLock(Path(path + "-writelock"))
            # One trip to the connection's thread per statement (see sqlite_driver), with the options
            # SQLAlchemy's aiosqlite dialect derives from the URL.
            cargs, options = SQLiteDialect_aiosqlite().create_connect_args(make_url(url))
            kwargs["async_creator"] = sqlite_driver.connector(*cargs, **{**options, "timeout": 30})
            if path and path != ":memory:":  # an in-memory database has one connection (a StaticPool)
                kwargs["pool_size"] = SQLITE_POOL_SIZE
                kwargs["max_overflow"] = SQLITE_MAX_OVERFLOW
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = max_overflow
            kwargs["pool_timeout"] = POOL_TIMEOUT
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
            if "options" not in make_url(url).query:
                # No JIT compilation: a search over thousands of candidates passes its cost threshold, and
                # compiling took about 20 ms of a 90 ms query (a `_sort` over 10,000 Encounters at 100k
                # resources) that runs once; a URL that sets `options` itself is left as it is.
                kwargs["connect_args"]["options"] = "-c jit=off"
        # Statement parameters hold patient data: never in an error message or a logged traceback.
        self.engine: AsyncEngine = create_async_engine(url, hide_parameters=True, **kwargs)
        self._write_lock = asyncio.Lock()
        # Set once enough PostgreSQL writes have committed since the last statistics check (see STALE_ROWS).
        self.statistics_due = asyncio.Event()
        self._writes = 0  # resource versions this process committed (at least one per write transaction)
        self._writes_at_check = 0  # ... as of the last refresh_statistics
        if self.is_sqlite:
            self._configure_sqlite()
        else:
            self._ping_idle_connections()

    def _ping_idle_connections(self) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "checkin")
        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            record.info["fhirvault_idle_since"] = time.monotonic()

        @event.listens_for(sync_engine, "checkout")
        def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            since = record.info.get("fhirvault_idle_since")
            if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
                return  # new, or in use a moment ago
            try:
                sync_engine.dialect.do_ping(dbapi_conn)
            except Exception as exc:  # noqa: BLE001 - any failure means: not this connection
                # the pool discards this connection and checks out another (SQLAlchemy's pessimistic
                # disconnect handling)
                raise DisconnectionError() from exc

    def _configure_sqlite(self) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get("fhirvault_write", False)
            statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
            driver = conn.connection.driver_connection
            if isinstance(driver, sqlite_driver.OneTripConnection):
                driver.begin_with_next(statement)  # sent with the transaction's first statement
            else:
                conn.exec_driver_sql(statement)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on success, rolled back on any exception.
        Raises errors.Unavailable when the database is away, errors.InsufficientStorage when full."""
        async with _translated_outages():
            if self.is_sqlite:
                async with self._write_lock, self._across_processes(), self.engine.connect() as conn:
                    conn = await conn.execution_options(fhirvault_write=True)
                    async with conn.begin():
                        yield conn
            else:
                async with self.engine.begin() as conn:
                    conn.info[_WRITTEN] = 0
                    yield conn
                    written = conn.info.pop(_WRITTEN, 0)
                self._count_writes(max(1, written))

    def _count_writes(self, versions: int) -> None:
        """`versions` more resource versions committed on PostgreSQL (a transaction Bundle commits hundreds
        at once); sets `statistics_due` once STALE_ROWS plus STALE_SHARE of those written before the last
        check have committed since it."""
        self._writes += versions
        if self._writes - self._writes_at_check >= STALE_ROWS + STALE_SHARE * self._writes_at_check:
            self.statistics_due.set()

    async def serialize(self, conn: AsyncConnection, key: str) -> None:
        """Makes the write transaction on `conn` the only one holding `key` until it ends: a transaction
        that asks for the same key waits until this one has committed or rolled back. PostgreSQL: a
        transaction-scoped advisory lock on a 64-bit hash of the key; SQLite: nothing to do, a write
        transaction already holds the database's one write lock (BEGIN IMMEDIATE, FileWriteLock)."""
        if self.is_sqlite:
            return
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": int.from_bytes(digest, "big", signed=True)})

    @asynccontextmanager
    async def _across_processes(self) -> AsyncIterator[None]:
        if self._file_lock is None:
            yield
            return
        await self._file_lock.acquire()
        try:
            yield
        finally:
            self._file_lock.release()

    @asynccontextmanager
    async def read(self, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; errors.Unavailable when the database is away. `snapshot`: every statement
        sees the database as of the first one, so that the parts of one answer agree (a search page and its
        total, its included resources); SQLite's read transaction always does. Without it, PostgreSQL runs
        each statement on its own (autocommit): for a read of one row a transaction would add a BEGIN and a
        ROLLBACK, two more round trips to the server. With it, PostgreSQL takes a REPEATABLE READ, READ ONLY
        transaction (at READ COMMITTED each statement takes its own snapshot, and a total counted while
        others write could disagree with the page beside it)."""
        async with _translated_outages(), self.engine.connect() as conn:
            if not self.is_sqlite:
                if snapshot:
                    await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                else:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    async def ping(self) -> None:
        """One round trip to the database; errors.Unavailable when it does not answer."""
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    @property
    def statistics_seconds(self) -> float:
        """How often the server should call refresh_statistics: hourly on SQLite (it gathers every table
        again), every minute on PostgreSQL (one catalog query; tables are analyzed only once they have
        changed enough), and on PostgreSQL sooner once `statistics_due` is set."""
        return 3600.0 if self.is_sqlite else 60.0

    async def refresh_statistics(self) -> int:
        """Gathers the query planner's statistics where they are missing or stale. Without them both
        databases misjudge how many rows a search's index conditions select: SQLite then reads every
        resource of the type, PostgreSQL nests loops that rescan an index table once per candidate (a
        chained search took minutes on a few thousand resources that arrived after its last ANALYZE).

        SQLite: ANALYZE, sampling at most 1000 rows per index so that it takes milliseconds at any size.
        PostgreSQL: ANALYZE of each of our tables modified by more than 50 rows + 10 % of its live rows
        since its last analysis (autovacuum's own rule, which this does not rely on: autovacuum may be
        off, and it wakes only once a minute per database); SKIP_LOCKED leaves a table another session
        is analyzing. Gives how many tables were analyzed (on SQLite: all of them, 1). Raises
        errors.Unavailable when the database is away."""
        self.statistics_due.clear()
        self._writes_at_check = self._writes
        async with self.write() as conn:
            if self.is_sqlite:
                await conn.exec_driver_sql("PRAGMA analysis_limit=1000")
                await conn.exec_driver_sql("ANALYZE")
                return 1
            stale = (await conn.execute(sa.text(
                "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
                "AND n_mod_since_analyze > :floor + :share * n_live_tup ORDER BY relname"),
                {"floor": STALE_ROWS, "share": STALE_SHARE})).scalars().all()
            for name in stale:
                await conn.exec_driver_sql(f'ANALYZE (SKIP_LOCKED) "{name}"')
            return len(stale)

    async def checkpoint(self) -> tuple[int, int] | None:
        """SQLite: copies what the write-ahead log holds back into the database (PRAGMA wal_checkpoint,
        PASSIVE: it waits for no reader or writer, and copies what none of them still needs), outside any
        request, so that commits rarely meet SQLITE_WAL_AUTOCHECKPOINT and copy thousands of pages
        themselves. Gives (pages in the log, pages copied), or None on PostgreSQL or while another
        connection checkpoints. Raises errors.Unavailable when the database cannot be opened."""
        if not self.is_sqlite:
            return None
        async with _translated_outages(), self.engine.connect() as conn:
            # straight to the driver: no transaction is begun, and a checkpoint cannot run inside one
            driver: Any = (await conn.get_raw_connection()).driver_connection
            async with driver.execute("PRAGMA wal_checkpoint(PASSIVE)") as cursor:
                busy, logged, copied = await cursor.fetchone()
        return None if busy else (logged, copied)

    async def migrate(self) -> int:
        """Apply every migration step of `fhirvault.store.migrations.STEPS` not yet applied, in one write
        transaction; returns the schema version. Never drops data."""
        async with self.write() as conn:
            await migrations.apply_steps(conn, postgres=not self.is_sqlite)
        return migrations.schema_version()

    async def close(self) -> None:
        """Closes every pooled connection and the SQLite lock file."""
        await self.engine.dispose()
        if self._file_lock is not None:
            self._file_lock.close()
