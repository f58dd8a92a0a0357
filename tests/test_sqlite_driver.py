"""The SQLite connections of store/sqlite_driver.py, through the store's Database on a real file: a
transaction's BEGIN travels with its first statement, yet transactions keep their meaning."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa

from fhirvault.store.database import Database
from fhirvault.store.sqlite_driver import OneTripConnection


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _db(tmp_path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with db.write() as conn:
        await conn.execute(sa.text("CREATE TABLE t (n INTEGER NOT NULL UNIQUE)"))
    return db


async def _count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar_one())


def test_the_engine_uses_one_trip_connections(tmp_path: Path) -> None:
    async def check() -> None:
        db = await _db(tmp_path)
        async with db.read() as conn:
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection, OneTripConnection)
        await db.close()

    run(check())


def test_a_read_transaction_keeps_its_snapshot(tmp_path: Path) -> None:
    """The deferred BEGIN sent along with the first SELECT opens a real transaction: rows committed by
    another connection afterwards stay invisible to it until it ends (WAL snapshot isolation)."""

    async def check() -> None:
        db = await _db(tmp_path)
        async with db.read() as reader:
            before = (await reader.execute(sa.text("SELECT count(*) FROM t"))).scalar_one()
            async with db.write() as writer:
                await writer.execute(sa.text("INSERT INTO t (n) VALUES (1)"))
            again = (await reader.execute(sa.text("SELECT count(*) FROM t"))).scalar_one()
            assert (before, again) == (0, 0)
        assert await _count(db) == 1
        await db.close()

    run(check())


def test_a_failed_write_leaves_nothing_and_an_empty_one_changes_nothing(tmp_path: Path) -> None:
    async def check() -> None:
        db = await _db(tmp_path)
        with pytest.raises(sa.exc.IntegrityError):
            async with db.write() as conn:
                await conn.execute(sa.text("INSERT INTO t (n) VALUES (1)"))
                await conn.execute(sa.text("INSERT INTO t (n) VALUES (1)"))  # UNIQUE fails: all rolled back
        assert await _count(db) == 0
        async with db.write():
            pass  # no statement: the BEGIN is never sent, and the next transactions work as before
        async with db.write() as conn:
            result = await conn.execute(sa.text("INSERT INTO t (n) VALUES (2)"))
            assert result.rowcount == 1
            rows = (await conn.execute(sa.text("SELECT n FROM t"))).all()
            assert [tuple(r) for r in rows] == [(2,)]
        assert await _count(db) == 1
        await db.close()

    run(check())


def test_many_concurrent_transactions_on_one_pool(tmp_path: Path) -> None:
    """Writers queue (one write lock) while readers go on; every committed row is counted once."""

    async def check() -> None:
        db = await _db(tmp_path)

        async def write(n: int) -> None:
            async with db.write() as conn:
                await conn.execute(sa.text("INSERT INTO t (n) VALUES (:n)"), {"n": n})

        counts = await asyncio.gather(*[write(n) for n in range(40)], *[_count(db) for _ in range(40)])
        assert all(0 <= c <= 40 for c in counts[40:])
        assert await _count(db) == 40
        await db.close()

    run(check())


def test_a_read_costs_one_trip_and_its_end_releases_the_snapshot(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """BEGIN and the SELECT travel together; the transaction, which wrote nothing, ends without a trip of
    its own. Ended it is: the next read on the same pooled connection sees what was committed since."""
    trips: list[object] = []
    trip = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(fn)
        return await trip(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)

    async def check() -> None:
        db = await _db(tmp_path)
        async with db.read() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            trips.clear()
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar_one() == 0
        assert len(trips) == 1
        assert not raw._conn.in_transaction
        async with db.write() as writer:
            await writer.execute(sa.text("INSERT INTO t (n) VALUES (1)"))
        async with db.read() as conn:
            assert (await conn.get_raw_connection()).driver_connection is raw  # the same pooled connection
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar_one() == 1
        await db.close()

    run(check())


def test_a_change_made_on_a_read_connection_is_rolled_back(tmp_path: Path) -> None:
    """A transaction that did write (here through a read connection, which never commits) is rolled back
    on the connection's thread, and what it wrote is gone."""

    async def check() -> None:
        db = await _db(tmp_path)
        async with db.read() as conn:
            await conn.execute(sa.text("INSERT INTO t (n) VALUES (7)"))
        assert await _count(db) == 0
        await db.close()

    run(check())
