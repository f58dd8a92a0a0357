"""The lock that lines up SQLite writers of several processes on the kernel instead of SQLite's busy loop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path


class FileWriteLock:
    """An exclusive `flock` on a file beside the database, held around each write transaction.

    Correctness does not depend on it: BEGIN IMMEDIATE still takes SQLite's own write lock. It is there
    for speed. A writer that finds SQLite's lock taken sleeps in SQLite's busy handler, which polls with
    sleeps of up to 100 ms, so under concurrent writes from several processes (server workers, the
    command line) most of the time goes to sleeping. A writer blocked in `flock` is woken by the kernel
    the moment the lock is given back. One instance per process and database; callers in one process
    must take it one at a time (Database holds an asyncio lock around it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    async def acquire(self) -> None:
        """Takes the lock: at once when it is free, else waiting in a worker thread. A cancelled waiter
        still waits for its thread to get the lock, and gives it back, before it is cancelled."""
        fd = self._file()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            while not waiting.done():  # a thread blocked in flock cannot be interrupted
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(waiting)
            if not waiting.cancelled() and waiting.exception() is None:
                self.release()
            raise

    def release(self) -> None:
        """Releases the lock held by this process (a no-op when the file is not open)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Closes the lock file; the lock, if held, goes with it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
