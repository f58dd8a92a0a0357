"""Byte streams shared by every layer: the async iterators of chunks that bodies and blobs travel as."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a stream of a single chunk (bytes already in memory, passed where a stream is taken)."""
    yield data


async def pieces(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The bytes of `chunks` regrouped into pieces of at least `size` bytes (the last may be shorter),
    so that per-piece work (a system call, a thread hop) is paid per `size` bytes, not per network read.
    A chunk that is a whole piece by itself passes through without a copy."""
    buffer = bytearray()
    async for chunk in chunks:
        if not buffer and len(chunk) >= size:
            yield chunk
            continue
        buffer += chunk
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


class InOrderWorker:
    """Runs a blocking function on successive pieces in a worker thread, one piece at a time and in the
    order given, while the event loop goes on gathering the next piece: at most one piece is being
    worked on and one more waits in the caller. Suits functions that release the GIL (hashlib, file
    writes)."""

    def __init__(self, work: Callable[[bytes], object]) -> None:
        self.work = work
        self._running: asyncio.Future[object] | None = None

    async def submit(self, piece: bytes) -> None:
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
