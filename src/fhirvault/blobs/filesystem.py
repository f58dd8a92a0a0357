"""Blobs as files under one directory: written to a temporary name, fsync'd, then renamed into place."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from fhirvault.blobs.base import BlobStore
from fhirvault.errors import StorageFailure
from fhirvault.streams import InOrderWorker, pieces

# Bytes per read system call; bigger chunks mean fewer thread hops per MiB.
IO_CHUNK = 1024 * 1024
# Bytes per write: one write runs in a worker thread while the next piece is gathered.
WRITE_CHUNK = 4 * 1024 * 1024


class FilesystemBlobStore(BlobStore):
    """One file per blob at `<root>/<k[0:2]>/<k[2:4]>/<key>`. Keys are unique across nodes and files are
    complete before they get their final name, so several nodes may share the directory; nothing is
    kept in memory between calls."""

    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise StorageFailure(f"'{key}' is not a valid blob key")
        return self.root / key[0:2] / key[2:4] / key

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        final = self.path_of(key)
        temp = final.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        try:
            fh = await asyncio.to_thread(_open_for_write, temp)
        except OSError as exc:
            raise StorageFailure(f"Cannot store blob {key}: {exc.strerror}") from exc
        writer = InOrderWorker(fh.write)
        try:
            async for piece in pieces(chunks, WRITE_CHUNK):
                await writer.submit(piece)
            await writer.drain()
            await asyncio.to_thread(_finish, fh, temp, final)
        except BaseException as exc:
            await writer.settle()  # the file is closed only once no thread writes to it
            await asyncio.to_thread(_discard, fh, temp)
            if isinstance(exc, OSError):
                raise StorageFailure(f"Cannot store blob {key}: {exc.strerror}") from exc
            raise

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        try:
            fh = await asyncio.to_thread(_open_for_read, path, start)
        except FileNotFoundError:
            raise StorageFailure(f"The bytes of blob {key} are missing from the storage directory") from None
        except OSError as exc:
            raise StorageFailure(f"Cannot read blob {key}: {exc.strerror}") from exc
        try:
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                size = IO_CHUNK if remaining is None else min(IO_CHUNK, remaining)
                data = await asyncio.to_thread(fh.read, size)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.path_of(key).unlink)
        except (FileNotFoundError, NotADirectoryError):
            pass  # never stored, or already gone
        except OSError as exc:
            raise StorageFailure(f"Cannot delete blob {key}: {exc.strerror}") from exc

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_of(key).is_file)


def _open_for_write(temp: Path) -> BinaryIO:
    temp.parent.mkdir(parents=True, exist_ok=True)
    # 'xb': never share a temporary file with another writer.
    return open(temp, "xb")  # noqa: SIM115 - closed by _finish or _discard


def _finish(fh: BinaryIO, temp: Path, final: Path) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(temp, final)
    # The rename itself must survive a crash too.
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _discard(fh: BinaryIO, temp: Path) -> None:
    fh.close()
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def _open_for_read(path: Path, start: int) -> BinaryIO:
    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if start:
        fh.seek(start)
    return fh
