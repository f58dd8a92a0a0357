"""Byte streams shared by every layer: the async iterators of chunks that bodies and blobs travel as."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a stream of a single chunk (bytes already in memory, passed where a stream is taken)."""
    yield data


async def batches(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[list[bytes]]:
    """The chunks of `chunks`, in order, gathered into lists holding at least `size` bytes each (the last
    may hold fewer, and is never empty), so that per-batch work (a thread hop, a system call) is paid per
    `size` bytes rather than per network read. No byte is copied: a worker hashes or writes the chunks of
    a batch one after another (joining them was a memcpy of every byte on the event loop, and the fresh
    multi-MiB buffers page-faulted in)."""
    gathered: list[bytes] = []
    held = 0
    async for chunk in chunks:
        gathered.append(chunk)
        held += len(chunk)
        if held >= size:
            yield gathered
            gathered = []
            held = 0
    if gathered:
        yield gathered


class InOrderWorker(Generic[T]):
    """Runs a blocking function on successive pieces (a batch of chunks, say) in a worker thread, one
    piece at a time and in the order given, while the event loop goes on gathering the next piece: at
    most one piece is being worked on and one more waits in the caller. Suits functions that release the
    GIL (hashlib, file writes)."""

    def __init__(self, work: Callable[[T], object]) -> None:
        self.work = work
        self._running: asyncio.Future[object] | None = None

    async def submit(self, piece: T) -> None:
        """Waits for the previous piece (raising its error, if any), then starts on this one."""
        await self.drain()
        self._running = asyncio.ensure_future(asyncio.to_thread(self.work, piece))

    async def drain(self) -> None:
        """Waits until every submitted piece is done; raises the error of a failed one."""
        running, self._running = self._running, None
        if running is not None:
            await running

    async def settle(self) -> None:
        """For error paths: waits until no thread works on a piece any more, whatever it raised (a file
        must not be closed under a write; a cancelled caller still waits for the thread)."""
        running, self._running = self._running, None
        if running is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(running)
