"""The pending-blob sweeper keeps going past a blob its store refuses to delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from fhirvault.blobs.base import BlobStore
from fhirvault.errors import StorageFailure
from fhirvault.service.binaries import BinaryService
from fhirvault.service.resources import ResourceService
from fhirvault.store.blobs import BlobRegistry
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore


class RefusingStore(BlobStore):
    """Deletes every key but one, which it refuses as a broken store would."""

    name = "refusing"

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.deleted: list[str] = []

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        raise AssertionError("not used")

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        raise AssertionError("not used")
        yield b""

    async def delete(self, key: str) -> None:
        if key == self.refused:
            raise StorageFailure(f"cannot delete {key}")
        self.deleted.append(key)

    async def exists(self, key: str) -> bool:
        return True


def test_one_refused_delete_does_not_block_the_other_stale_blobs(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        await db.migrate()
        registry = BlobRegistry()
        keys = [f"key-{i}" for i in range(5)]
        store = RefusingStore(refused=keys[0])  # the oldest: the first the sweeper meets
        async with db.write() as conn:
            for i, key in enumerate(keys):
                await registry.add_pending(conn, f"blob-{i}", "refusing", key, created=1_000 + i)
        rows = ResourceStore()
        service = BinaryService(db, ResourceService(db, rows), rows, store, registry,
                                inline_max_bytes=10, max_binary_bytes=1000, pending_grace_seconds=0)
        try:
            assert await service.sweep() == 4
            assert store.deleted == keys[1:]
            async with db.read() as conn:
                assert await registry.get(conn, "blob-0") is not None  # kept for a later sweep
                assert all([await registry.get(conn, f"blob-{i}") is None for i in range(1, 5)])
        finally:
            await db.close()

    asyncio.run(scenario())
