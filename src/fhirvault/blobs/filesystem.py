"""Blobs as files under one directory: written to a temporary name, fsync'd, then renamed into place."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from fhirvault.blobs.base import OWN_KEY, BlobStore
from fhirvault.errors import InsufficientStorage, StorageFailure
from fhirvault.streams import InOrderWorker, batches

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
        # Made at once, so that a directory missing later (an unmounted share) is seen by the probe; one
        # that cannot be made is reported by the probe and by every write, not by a failed start.
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        """The file of blob `key`: `<root>/<k[0:2]>/<k[2:4]>/<key>`. Raises StorageFailure for a key that
        could leave the directory or name a hidden file."""
        if not key or "/" in key or key.startswith("."):
            raise StorageFailure(f"'{key}' is not a valid blob key")
        return self.root / key[0:2] / key[2:4] / key

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """As BlobStore.put: written to a hidden temporary file in the blob's directory, fsynced, then renamed
        into place, so a blob file is always whole; a failure removes the temporary file."""
        final = self.path_of(key)
        temp = final.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        try:
            fh = await asyncio.to_thread(_open_for_write, temp)
        except OSError as exc:
            raise _write_failure(key, exc) from exc
        writer: InOrderWorker[list[bytes]] = InOrderWorker(fh.writelines)
        try:
            async for batch in batches(chunks, WRITE_CHUNK):
                await writer.submit(batch)
            await writer.drain()
            await asyncio.to_thread(_finish, fh, temp, final)
        except BaseException as exc:
            await writer.settle()  # the file is closed only once no thread writes to it
            await asyncio.to_thread(_discard, fh, temp)
            if isinstance(exc, OSError):
                raise _write_failure(key, exc) from exc
            raise

    def staging_path(self, key: str) -> Path:
        """The file a resumable upload appends to: `.<key>.upload.tmp` beside the blob's final place (the
        temporary-file shape, so the sweeper and `delete` know its owner)."""
        final = self.path_of(key)
        return final.with_name(f".{key}.upload.tmp")

    async def append(self, key: str, offset: int, chunks: AsyncIterator[bytes], staging: dict[str, Any],
                     *, length: int) -> dict[str, Any]:
        """Appends to the staging file from `offset` (cut there first), fsync'd before returning."""
        path = self.staging_path(key)
        try:
            fh = await asyncio.to_thread(_open_for_append, path, offset)
        except OSError as exc:
            raise _write_failure(key, exc) from exc
        writer: InOrderWorker[list[bytes]] = InOrderWorker(fh.writelines)
        try:
            try:
                async for batch in batches(chunks, WRITE_CHUNK):
                    await writer.submit(batch)
                await writer.drain()
            finally:
                await writer.settle()
            await asyncio.to_thread(_sync, fh)
        except OSError as exc:
            raise _write_failure(key, exc) from exc
        finally:
            await asyncio.to_thread(fh.close)
        return staging

    async def drop_staging(self, key: str, offset: int, staging: dict[str, Any], keep: dict[str, Any]) -> None:
        """As BlobStore.drop_staging: truncates the staging file to `offset` bytes."""
        try:
            await asyncio.to_thread(_cut, self.staging_path(key), offset)
        except OSError as exc:
            raise _write_failure(key, exc) from exc

    async def finish_staging(self, key: str, staging: dict[str, Any], size: int) -> None:
        """As BlobStore.finish_staging: checks the staging file holds `size` bytes, fsyncs it and renames it
        to the blob's file."""
        path = self.staging_path(key)
        try:
            await asyncio.to_thread(_promote, path, self.path_of(key), size)
        except OSError as exc:
            raise _write_failure(key, exc) from exc

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """As BlobStore.get: reads the file from `start`, in chunks, in a worker thread."""
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
        """As BlobStore.delete: removes the blob's file, its staging file and any temporary files of
        unfinished writes."""
        try:
            await asyncio.to_thread(_unlink_all, self.path_of(key))
        except OSError as exc:
            raise StorageFailure(f"Cannot delete blob {key}: {exc.strerror}") from exc

    async def probe(self) -> None:
        """The storage directory exists and this process may write into it."""
        if not await asyncio.to_thread(_writable_directory, self.root):
            raise StorageFailure(f"The storage directory {self.root} is missing or not writable")

    async def stored_keys(self, changed_before: float) -> AsyncIterator[str]:
        """Keys of final files and of temporary files (`.<key>.<uuid>.tmp`) older than `changed_before`."""
        for directory in await asyncio.to_thread(_leaf_directories, self.root):
            for key in await asyncio.to_thread(_keys_in, directory, changed_before):
                yield key

    async def exists(self, key: str) -> bool:
        """As BlobStore.exists: whether the blob's file exists."""
        return await asyncio.to_thread(self.path_of(key).is_file)


def _write_failure(key: str, exc: OSError) -> StorageFailure | InsufficientStorage:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"The storage directory has no room left for blob {key}; nothing was kept")
    return StorageFailure(f"Cannot store blob {key}: {exc.strerror}")


def _unlink_all(final: Path) -> None:
    """The blob's file and any temporary file a write that died left beside it."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        final.unlink()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for temp in final.parent.glob(f".{final.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _writable_directory(root: Path) -> bool:
    return root.is_dir() and os.access(root, os.W_OK | os.X_OK)


def _leaf_directories(root: Path) -> list[Path]:
    """The `<k[0:2]>/<k[2:4]>` directories under the root."""
    try:
        return [leaf for top in root.iterdir() if top.is_dir() and len(top.name) == 2
                for leaf in top.iterdir() if leaf.is_dir() and len(leaf.name) == 2]
    except FileNotFoundError:
        return []


def _keys_in(directory: Path, changed_before: float) -> list[str]:
    keys = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp"):
            name = name[1:].split(".", 1)[0]
        if not OWN_KEY.fullmatch(name):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < changed_before:
                keys.append(name)
        except FileNotFoundError:
            continue
    return keys


def _open_for_write(temp: Path) -> BinaryIO:
    temp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # O_EXCL: never share a temporary file with another writer; 0600: blobs are patient data, readable
    # by the server's user only, whatever the umask of the process that writes them.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


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


def _open_for_append(path: Path, offset: int) -> BinaryIO:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fh = os.fdopen(fd, "r+b")
    # Bytes past the recorded offset belong to an append whose result was never recorded.
    fh.truncate(offset)
    fh.seek(offset)
    return fh


def _cut(path: Path, offset: int) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "r+b") as fh:
        if os.fstat(fh.fileno()).st_size > offset:
            fh.truncate(offset)
            os.fsync(fh.fileno())


def _sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _promote(staged: Path, final: Path, size: int) -> None:
    """The staging file, cut to `size` and made durable, becomes the blob (an empty blob needs no append)."""
    if not staged.exists():
        if final.is_file() and final.stat().st_size == size:
            return  # promoted already by an attempt whose database commit did not follow
        if size == 0:
            _open_for_append(staged, 0).close()
    with open(staged, "r+b") as fh:
        fh.truncate(size)
        _finish(fh, staged, final)


def _discard(fh: BinaryIO, temp: Path) -> None:
    fh.close()
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def _open_for_read(path: Path, start: int) -> BinaryIO:
    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if start:
        fh.seek(start)
    return fh
